"""The operators' console in a real Chromium (Playwright, Debian's chromium), against
real ``hiscrm web``, ``hiscrm master`` and ``hiscrm worker`` processes and the sandbox
site: what an operator does and sees, from signing in to a crawled comment."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Dialog, Page, async_playwright, expect

from tests.browser.conftest import Site
from tests.browser.flows import USER, sandbox
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
OPERATOR, PASSWORD = "ops", "a console password"
HOSTILE = "<script>alert(1)</script><b>bold</b>"
# what a worker needs at most for one step here (a login, a crawl at a 0.5 s interval)
STEP_MS = 20_000


async def on_sandbox(site: Site, *args: str) -> str:
    """``hiscrm sandbox …`` (the phone, a fan) without holding up the browser's events."""
    return await anyio.to_thread.run_sync(lambda: sandbox(site, *args))


async def sign_in(page: Page, web: str) -> None:
    await expect(page).to_have_url(f"{web}/signin")
    await page.locator("#signin [name=user]").fill(OPERATOR)
    await page.locator("#signin [name=password]").fill(PASSWORD)
    await page.locator("#signin button[type=submit]").click()
    await expect(page).to_have_url(f"{web}/")


async def test_an_operator_adds_an_account_logs_it_in_and_watches_it_work(
    browser_stack: Stack, site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    stack = browser_stack
    site = site_factory()
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    stack.worker("w1")
    web = stack.web()
    password_file = tmp_path / "console-password"
    password_file.write_text(PASSWORD + "\n")
    stack.cli("web", "adduser", OPERATOR, "--password-file", str(password_file), check=True)

    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(base_url=web)
            context.on("dialog", on_dialog)
            fleet = await context.new_page()

            # no session: every page sends the browser to sign in
            await fleet.goto("/accounts/acc-1")
            await sign_in(fleet, web)
            await expect(fleet.locator('#workers tr[data-worker="w1"]')).to_be_visible()

            # add an account on the fleet page
            form = fleet.locator("form#add-account")
            await form.locator("[name=id]").fill("acc-1")
            await form.locator("[name=platform]").select_option("sandbox")
            worker = form.locator("[name=worker]")
            if await worker.evaluate("e => e.tagName") == "SELECT":
                await worker.select_option("w1")
            else:
                await worker.fill("w1")
            await form.locator("[name=interval]").fill("0.5")
            await form.locator("button[type=submit]").click()
            await expect(fleet.locator("#action-result")).to_contain_text("added account acc-1")
            task = fleet.locator('#accounts tr[data-account="acc-1"] td.task')
            await expect(task).to_have_attribute("data-state", "waiting_login", timeout=STEP_MS)
            await fleet.evaluate("window.notReloaded = true")

            # "Log in" on the account page: the QR code in a modal, then the phone's scan
            page = await context.new_page()
            await page.goto("/accounts/acc-1")
            await page.locator("#login-button").click()
            qr = page.locator('#modal .modal img.qr[src^="data:image/png;base64,"]')
            await expect(qr).to_be_visible(timeout=STEP_MS)
            status = page.locator("#login-status")
            await expect(status).to_have_text("scan the QR code with the app")
            await on_sandbox(site, "scan", "--user-id", USER, "--nickname", "小王", "--no-confirm")
            await expect(status).to_have_text("scanned: confirm on your phone", timeout=STEP_MS)
            await on_sandbox(site, "scan", "--user-id", USER, "--nickname", "小王")
            await expect(status).to_have_text(
                f"logged in as 小王 (platform_user_id {USER})", timeout=STEP_MS
            )
            await expect(page.locator("#login-applied")).to_contain_text(
                re.compile(r"platform_user_id applied in \d+ ms without a restart"),
                timeout=STEP_MS,
            )
            # the fleet page, open all along, shows the task running: no reload
            await expect(task).to_have_attribute("data-state", "running", timeout=STEP_MS)
            assert await fleet.evaluate("window.notReloaded") is True
            await page.locator("#modal-close").click()
            await expect(page.locator("#modal .modal")).to_have_count(0)

            # fans comment; the account page shows it without a reload, as text
            await page.evaluate("window.notReloaded = true")
            await on_sandbox(site, "post-comment", "好看！", "--user-id", USER)
            await on_sandbox(
                site, "post-comment", HOSTILE, "--user-id", USER, "--author", "<i>mallory</i>"
            )
            comments = page.locator("#comments li[data-item]")
            await expect(comments.filter(has_text="好看！")).to_have_count(1, timeout=STEP_MS)
            hostile = comments.filter(has_text=HOSTILE)
            await expect(hostile).to_have_count(1, timeout=STEP_MS)
            await expect(hostile).to_contain_text("<i>mallory</i>")
            assert await page.locator("#comments b, #comments i, #comments script").count() == 0
            assert await page.evaluate("window.notReloaded") is True

            # an invalid value is refused with the reason; nothing is written
            before, outcomes = stack.account("acc-1"), len(stack.outcomes())
            await page.locator("#config [name=monitor_interval_s]").fill("-5")
            await page.locator("#config button[type=submit]").click()
            refused = page.locator("#outcome .error")
            await expect(refused).to_contain_text(re.compile(r"monitor_interval_s.*greater than"))
            assert stack.account("acc-1") == before
            assert before["monitor_interval_s"] == "0.5"
            assert len(stack.outcomes()) == outcomes

            # a POST with the session's cookie but without its CSRF token: 403, no change
            forged = await page.request.post(
                "/accounts/acc-1/config", form={"monitor_interval_s": "9"}, max_redirects=0
            )
            assert forged.status == 403
            assert "CSRF token is missing or wrong" in await forged.text()
            assert stack.account("acc-1") == before

            # another browser without a session, and this one after signing out
            stranger = await (await browser.new_context(base_url=web)).new_page()
            await stranger.goto("/accounts/acc-1")
            await expect(stranger).to_have_url(f"{web}/signin")
            await fleet.locator("form.signout button[type=submit]").click()
            await expect(fleet).to_have_url(f"{web}/signin")
            await page.goto("/")
            await expect(page).to_have_url(f"{web}/signin")
        finally:
            await browser.close()
    # the fan's markup never ran: no alert, and nothing asked for confirmation
    assert dialogs == []
