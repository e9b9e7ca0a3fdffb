"""The terminal rendering of a QR code PNG."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
import qrcode
from PIL import Image

from hiscrm_bus.messages import LoginQrCode
from hiscrm_cli.login import _show_qr
from hiscrm_cli.qrview import qr_to_text
from hiscrm_sandbox.site import qr_png


def modules(data: str) -> list[list[bool]]:
    qr = qrcode.QRCode(border=0)
    qr.add_data(data)
    qr.make()
    return [list(row) for row in qr.get_matrix()]


def test_draws_every_module_of_the_code() -> None:
    data = "http://127.0.0.1:8765/scan?token=abc123"
    text = qr_to_text(qr_png(data))
    assert text is not None
    matrix = modules(data)
    size = len(matrix)
    quiet = 2
    lines = text.splitlines()
    assert len(lines) == (size + 2 * quiet + 1) // 2
    assert all(len(line) == size + 2 * quiet for line in lines)
    # light modules are drawn, dark ones blank: decode the half blocks back
    cells = {"█": (False, False), "▄": (True, False), "▀": (False, True), " ": (True, True)}
    for r in range(0, size, 2):
        line = lines[(r + quiet) // 2]  # quiet is even: module rows pair up from r
        for c in range(size):
            upper, lower = cells[line[c + quiet]]
            assert upper == matrix[r][c]
            if r + 1 < size:
                assert lower == matrix[r + 1][c]


@pytest.mark.parametrize("scale", [0.9, 1.37, 1.5, 2.2])
def test_a_scaled_screenshot_still_reads(scale: float) -> None:
    png = qr_png("http://127.0.0.1:8765/scan?token=zz")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    scaled = img.resize((int(img.width * scale), int(img.height * scale)))
    out = io.BytesIO()
    scaled.save(out, format="PNG")
    assert qr_to_text(out.getvalue()) == qr_to_text(png)


def test_not_a_qr_code_is_none() -> None:
    assert qr_to_text(b"not a png") is None
    blank = io.BytesIO()
    Image.new("L", (100, 100), 255).save(blank, format="PNG")
    assert qr_to_text(blank.getvalue()) is None


def claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` pixels."""
    small = io.BytesIO()
    Image.new("L", (1, 1), 255).save(small, format="PNG")
    png = bytearray(small.getvalue())
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


@pytest.mark.parametrize("side", [5_000, 12_000, 100_000])
def test_an_image_claiming_too_many_pixels_is_not_decoded(side: int) -> None:
    # 25 M pixels (under Pillow's own bound), 144 M (Pillow warns), 10 G (Pillow refuses)
    assert qr_to_text(claiming(side, side)) is None


def test_a_qr_code_that_is_no_base64_is_one_line_and_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = LoginQrCode(
        sender="w1", session_id="s1", account_id="acc-1", worker_id="w1", png_b64="not base64!"
    )
    _show_qr(message, "acc-1", tmp_path / "qr")
    assert "not an image" in capsys.readouterr().out
    assert not (tmp_path / "qr").exists()
