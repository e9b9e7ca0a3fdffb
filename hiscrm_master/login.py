"""Login success: save what the platform told us, atomically, and notify the worker."""

from __future__ import annotations

import logging

from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig
from hiscrm_bus.messages import LoginSuccess

from .updates import Updates

log = logging.getLogger(__name__)


async def on_login_success(updates: Updates, event: LoginSuccess) -> bool:
    """One atomic hash update (platform_user_id, login_status, user_info, version bump),
    then ``master:account:config_update`` (reason login_success) to the owner, tracked.
    A login for an unknown account or with an empty user id is refused whole."""
    account_id = event.account_id
    user_id = event.platform_user_id.strip()
    if not user_id:
        log.warning(
            "login success for %s from worker %s refused: empty platform_user_id",
            account_id,
            event.worker_id,
        )
        return False
    changes = {
        "platform_user_id": user_id,
        "login_status": "logged_in",
        "user_info": event.user_info,
    }
    try:
        result, sent = await updates.change(account_id, changes, "login_success")
    except AccountNotFound:
        log.warning("login success for unknown account %s refused", account_id)
        return False
    except InvalidAccountConfig as exc:
        log.warning("login success for %s refused: %s", account_id, exc)
        return False
    log.info(
        "login success for %s: platform_user_id %s saved as version %d%s",
        account_id,
        user_id,
        result.version,
        f"; update {sent.update_id} sent to worker {result.worker_id}" if sent else "",
    )
    return True
