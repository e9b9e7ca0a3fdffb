"""The README's screenshots of the web console: docs/fleet.png and docs/login-modal.png.

    .venv/bin/python docs/screenshots.py        # or: make screenshots

It runs ``hiscrm up`` in a scratch directory (its own Redis, sandbox site, Master, worker
w1 and console, nothing shared with var/up), adds a small fleet with the CLI, signs in to
the console in Debian's Chromium (Playwright; nothing is downloaded), presses "Log in"
on an account and takes the QR modal, scans the code with ``hiscrm sandbox scan``, lets
the accounts crawl and the fleet-wide change land, and takes the fleet page. Everything
it started is stopped at the end (``hiscrm up``'s own Ctrl-C)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, expect, sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("HISCRM_CHROMIUM", "/usr/bin/chromium")
VIEWPORT: ViewportSize = {"width": 1280, "height": 860}
STEP_MS = 30_000
USER = "1864722759"
COMMENTS = ("好看！", "在哪里买？", "已关注", "<b>markup</b> stays text")


class Up:
    """``hiscrm up`` in ``data_dir``, and commands run as from a shell that sourced its
    env file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        base = {k: v for k, v in os.environ.items() if not k.startswith("HISCRM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=base,
        )
        assert self.proc.stdout is not None
        shown = []
        for line in self.proc.stdout:
            shown.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            raise SystemExit(f"hiscrm up did not start:\n{''.join(shown)}")
        found = re.search(r"web console +(http://\S+?)/ ", "".join(shown))
        assert found, shown
        self.web = found.group(1)
        self.password = (data_dir / "web-admin-password").read_text().strip()
        self.env = dict(base)
        for line in (data_dir / "env").read_text().splitlines():
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                self.env[name] = shlex.split(value)[0]

    def hiscrm(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "hiscrm_cli", "--log-level", "warning", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"hiscrm {shlex.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=60)


def fleet(up: Up) -> None:
    """A few accounts: three synthetic ones (no browser), two on the sandbox site."""
    for n in (1, 2, 3):
        up.hiscrm("account", "add", f"shop-{n}", "--platform", "synthetic", "--interval", "2")
        up.hiscrm("account", "login-success", f"shop-{n}", "--platform-user-id", f"9000{n}")
    for account in ("brand-cn", "brand-eu"):
        up.hiscrm("account", "add", account, "--platform", "sandbox", "--interval", "1")
    for text in COMMENTS:
        up.hiscrm("sandbox", "post-comment", text, "--user-id", USER)


def sign_in(page: Page, up: Up) -> None:
    page.goto("/signin")
    page.locator("#signin [name=user]").fill("admin")
    page.locator("#signin [name=password]").fill(up.password)
    page.locator("#signin button[type=submit]").click()
    expect(page).to_have_url(f"{up.web}/")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hiscrm-screenshots-") as scratch:
        up = Up(Path(scratch) / "up")
        try:
            fleet(up)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
                context = browser.new_context(
                    base_url=up.web, viewport=VIEWPORT, device_scale_factor=1
                )
                page = context.new_page()
                sign_in(page, up)

                page.goto("/accounts/brand-cn")
                page.locator("#login-button").click()
                qr = page.locator('#modal img.qr[src^="data:image/png;base64,"]')
                expect(qr).to_be_visible(timeout=STEP_MS)
                page.screenshot(path=DOCS / "login-modal.png")
                up.hiscrm("sandbox", "scan", "--user-id", USER, "--nickname", "小王")
                expect(page.locator("#login-applied")).to_contain_text(
                    "without a restart", timeout=STEP_MS
                )

                # a fleet-wide change, for the tally's and the latency chart's sake
                up.hiscrm("account", "set", "--platform", "synthetic", "max_items_per_crawl=50")
                page.goto("/")
                running = page.locator('#accounts tr[data-account="brand-cn"] td.task')
                expect(running).to_have_attribute("data-state", "running", timeout=STEP_MS)
                crawled = page.locator('#accounts tr[data-account="brand-cn"]')
                expect(crawled).to_contain_text(f"{len(COMMENTS)} c", timeout=STEP_MS)
                page.screenshot(path=DOCS / "fleet.png", full_page=True)
                browser.close()
        finally:
            up.stop()
    for name in ("fleet.png", "login-modal.png"):
        print(f"wrote {DOCS / name}")


if __name__ == "__main__":
    main()
