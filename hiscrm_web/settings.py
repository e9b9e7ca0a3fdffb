"""Console settings (``HISCRM_WEB_*``), on top of the Master's (it writes as an operator)."""

from __future__ import annotations

from pydantic import Field

from hiscrm_master.settings import MasterSettings


class WebSettings(MasterSettings):
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)
    # a signed-in session lasts this long without use
    web_session_ttl_s: int = Field(12 * 3600, ge=60)
    # and at most this long after sign-in, used or not
    web_session_max_age_s: int = Field(24 * 3600, ge=60)
    # failed sign-ins from one address before it must wait, and how long
    web_max_attempts: int = Field(10, ge=1)
    web_attempts_window_s: int = Field(300, ge=1)
    # Secure cookies: set when the console is served over HTTPS (behind a proxy)
    web_secure_cookies: bool = False
