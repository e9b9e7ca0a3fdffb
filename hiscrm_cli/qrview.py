"""Draw a QR code PNG in the terminal with half-block characters."""

from __future__ import annotations

import io
import warnings

from PIL import Image

# a login QR code is a few hundred pixels a side; a worker's PNG may claim anything
MAX_PIXELS = 4096 * 4096


def qr_to_text(png: bytes) -> str | None:
    """The QR code as text (two module rows per line), or None if it cannot be read.
    An image over MAX_PIXELS is not decoded (a PNG of a few KB may claim gigapixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(png))
            if opened.width * opened.height > MAX_PIXELS:
                return None
            img = opened.convert("L")
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None
    width, height = img.size
    px = img.load()
    if px is None:
        return None

    def dark(x: int, y: int) -> bool:
        value = px[x, y]
        return (value if isinstance(value, int | float) else value[0]) < 128

    box = img.point(lambda v: 255 if v < 128 else 0).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box

    # the top-left finder pattern is 7 modules wide: its first dark run gives the module
    # size. Measured across the middle of the top module row, since a scaled screenshot's
    # edges are blurred.
    def run_at(y: int) -> int:
        n = 0
        while left + n < right and dark(left + n, y):
            n += 1
        return n

    first = run_at(top)
    run = max(first, run_at(min(top + max(1, first // 14), bottom - 1)))
    if run < 7:
        return None
    cols = round((right - left) / (run / 7))
    rows = round((bottom - top) / (run / 7))
    module = (right - left) / max(cols, 1)
    if not (21 <= cols <= 177 and abs(cols - rows) <= 1):
        return None

    def cell(c: int, r: int) -> bool:
        if r >= rows:
            return False
        x = min(int(left + (c + 0.5) * module), width - 1)
        y = min(int(top + (r + 0.5) * module), height - 1)
        return dark(x, y)

    quiet = 2
    lines = []
    for r in range(-quiet, rows + quiet, 2):
        line = []
        for c in range(-quiet, cols + quiet):
            inside = 0 <= c < cols
            upper = inside and 0 <= r < rows and cell(c, r)
            lower = inside and 0 <= r + 1 < rows and cell(c, r + 1)
            # light modules are drawn, dark ones left blank: readable on dark terminals
            line.append(
                {(False, False): "█", (True, False): "▄", (False, True): "▀"}.get(
                    (upper, lower), " "
                )
            )
        lines.append("".join(line))
    return "\n".join(lines)
