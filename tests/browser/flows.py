"""What browser tests do again and again: run the sandbox CLI, log an account in
through `hiscrm login` and a scan, as a person would."""

from __future__ import annotations

import subprocess
import sys

from tests.browser.conftest import Site
from tests.e2e.stack import Stack

USER = "1864722759"


def sandbox(site: Site, *args: str) -> str:
    """``hiscrm sandbox …`` against the site; returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "sandbox", *args, "--url", site.url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def start_login(stack: Stack, account_id: str = "acc-1") -> subprocess.Popen[str]:
    """``hiscrm login`` running, once it shows the QR code (Chromium runs then)."""
    login = subprocess.Popen(
        [
            *(sys.executable, "-m", "hiscrm_cli", "login", account_id, "--timeout", "60"),
            *("--qr-dir", str(stack.workdir / "qr")),
        ],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert login.stdout is not None
    for line in login.stdout:
        if "QR code" in line:
            return login
    login.wait(10)
    raise AssertionError(f"hiscrm login ended without a QR code (exit {login.returncode})")


def log_in(stack: Stack, site: Site, account_id: str = "acc-1", user: str = USER) -> str:
    """A whole QR login: started, scanned on the site, ended; returns its output."""
    login = start_login(stack, account_id)
    sandbox(site, "scan", "--user-id", user, "--nickname", "fan")
    out, _ = login.communicate(timeout=60)
    assert login.returncode == 0, out
    return out
