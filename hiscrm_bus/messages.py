"""Every message on the bus: an envelope plus a typed payload, in one discriminated union.

``decode`` is the only way bytes become a message, and it never raises: it returns the
message or a :class:`DecodeError` that the caller dead-letters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from . import PROTOCOL_VERSION
from .limits import MAX_MESSAGE_BYTES, MAX_VERSION, check_depth, clip, utcnow

CONFIG_UPDATE: Final = "master:account:config_update"
CONFIG_UPDATE_ACK: Final = "master:account:config_update:ack"
CONFIG_UPDATE_ACKS: Final = "master:account:config_update:acks"
# what one AccountConfigAcks carries: at most 1,000 entries, and at most this much error
# text in all (at up to 6 bytes a character as JSON, an escaped control character, well
# under the 4 MiB message bound with the entries' other fields); a sender cuts by both
MAX_ACKS_PER_MESSAGE: Final = 1000
MAX_ACK_ERROR_CHARS: Final = 500_000

UpdateReason = Literal[
    "login_success",
    "login_expired",
    "admin_update",
    "assignment",
    "unassignment",
    "removed",
    "failover",
]
MAX_ITEM_TEXT = 20_000
# free-form JSON a platform gave us (a profile, an item's extra fields): kept, but shallow
JsonObject = Annotated[dict[str, Any], AfterValidator(check_depth)]
TaskState = Literal["starting", "waiting_login", "running", "disabled", "error", "stopped"]


def new_id() -> str:
    """A random 128-bit id in hex (as uuid4().hex, at a fraction of its cost)."""
    return secrets.token_hex(16)


class Envelope(BaseModel):
    """Fields every message carries apart from its payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    sent_at: datetime = Field(default_factory=utcnow)
    sender: str = Field(min_length=1, max_length=200)
    protocol: Literal[1] = PROTOCOL_VERSION


class AccountConfigUpdate(Envelope):
    """Master → worker: the account's config is now at ``config_version``; read the hash."""

    type: Literal["master:account:config_update"] = CONFIG_UPDATE
    update_id: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    config_version: int = Field(ge=0, le=MAX_VERSION)
    reason: UpdateReason
    updated_fields: tuple[str, ...] = ()
    attempt: int = Field(1, ge=1)


class AccountConfigUpdateAck(Envelope):
    """Worker → Master: the version now in force for the account on this worker.

    ``update_id`` is empty when the worker caught up by reconciling rather than because
    of one update; the Master then resolves by account and version alone.
    ``seen_version`` is the version the worker read from the hash (the one it rejected,
    when ``ok`` is false).
    """

    type: Literal["master:account:config_update:ack"] = CONFIG_UPDATE_ACK
    update_id: str = Field("", max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    applied_version: int = Field(ge=0, le=MAX_VERSION)
    seen_version: int = Field(ge=0, le=MAX_VERSION)
    ok: bool
    error: str | None = Field(None, max_length=2000)
    applied_at: datetime = Field(default_factory=utcnow)


class AckEntry(BaseModel):
    """One account's ACK inside :class:`AccountConfigAcks` (the fields of
    :class:`AccountConfigUpdateAck` that differ from account to account)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: str = Field(min_length=1, max_length=200)
    applied_version: int = Field(ge=0, le=MAX_VERSION)
    seen_version: int = Field(ge=0, le=MAX_VERSION)
    ok: bool
    error: str | None = Field(None, max_length=2000)


class AccountConfigAcks(Envelope):
    """Worker → Master: many accounts' ACKs in one message, as a reconcile sends them
    (10,000 accounts taken over are ten of these, not 10,000 stream entries). Each entry
    is resolved exactly as an :class:`AccountConfigUpdateAck` without an ``update_id``."""

    type: Literal["master:account:config_update:acks"] = CONFIG_UPDATE_ACKS
    worker_id: str = Field(min_length=1, max_length=200)
    acks: tuple[AckEntry, ...] = Field(min_length=1, max_length=MAX_ACKS_PER_MESSAGE)
    applied_at: datetime = Field(default_factory=utcnow)

    def each(self) -> list[AccountConfigUpdateAck]:
        """The entries as single ACKs (already validated here, so not validated again)."""
        return [
            AccountConfigUpdateAck.model_construct(
                message_id=self.message_id,
                sent_at=self.sent_at,
                sender=self.sender,
                protocol=self.protocol,
                type=CONFIG_UPDATE_ACK,
                update_id="",
                account_id=a.account_id,
                worker_id=self.worker_id,
                applied_version=a.applied_version,
                seen_version=a.seen_version,
                ok=a.ok,
                error=a.error,
                applied_at=self.applied_at,
            )
            for a in self.acks
        ]


class LoginRequest(Envelope):
    """Master → worker: open the platform's login page for the account and report."""

    type: Literal["master:login:request"] = "master:login:request"
    session_id: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    timeout_s: float = Field(120.0, gt=0, le=3600)


class LoginQrCode(Envelope):
    """Worker → Master: the QR code to scan (a PNG), first shown or refreshed."""

    type: Literal["worker:login:qrcode"] = "worker:login:qrcode"
    session_id: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    png_b64: str = Field(min_length=1, max_length=2_000_000)
    refresh: int = Field(0, ge=0)


class LoginProgress(Envelope):
    """Worker → Master: the login moved on (e.g. the code was scanned)."""

    type: Literal["worker:login:progress"] = "worker:login:progress"
    session_id: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    status: Literal["page_opened", "scanned"]


class LoginSuccess(Envelope):
    """Worker → Master: a login finished; the account now has a platform user id."""

    type: Literal["worker:login:success"] = "worker:login:success"
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    platform_user_id: str = Field(max_length=200)
    user_info: JsonObject = Field(default_factory=dict)
    session_id: str = Field("", max_length=64)


class LoginFailed(Envelope):
    """Worker → Master: a login ended without success (expired, timed out, error)."""

    type: Literal["worker:login:failed"] = "worker:login:failed"
    session_id: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    reason: Literal["expired", "timeout", "error", "busy", "unsupported"]
    error: str = Field("", max_length=2000)


class LoginExpired(Envelope):
    """Worker → Master: the platform no longer accepts the account's session (it was
    sent to the login page, or an API answered "not logged in")."""

    type: Literal["worker:login:expired"] = "worker:login:expired"
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=2000)


class CrawledItem(BaseModel):
    """One comment or direct message, with the platform's own id for de-duplication."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["comment", "dm"]
    item_id: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=MAX_ITEM_TEXT)
    author: str = Field("", max_length=500)
    created_at: datetime
    extra: JsonObject = Field(default_factory=dict)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # a platform's time without a zone is taken as UTC: every time kept is aware
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @field_validator("text", "author", mode="before")
    @classmethod
    def _clipped(cls, value: Any, info: ValidationInfo) -> Any:
        # what a fan wrote is kept, cut to size, rather than losing the whole crawl
        limit = MAX_ITEM_TEXT if info.field_name == "text" else 500
        return clip(value, limit) if isinstance(value, str) else value


class CrawlBatch(Envelope):
    """Worker → Master: what one crawl of one account found."""

    type: Literal["worker:crawl:batch"] = "worker:crawl:batch"
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    crawled_at: datetime = Field(default_factory=utcnow)
    items: tuple[CrawledItem, ...] = Field((), max_length=5000)


class TaskStatus(Envelope):
    """Worker → Master: a monitor task changed state."""

    type: Literal["worker:task:status"] = "worker:task:status"
    account_id: str = Field(min_length=1, max_length=200)
    worker_id: str = Field(min_length=1, max_length=200)
    state: TaskState
    config_version: int = Field(ge=0)
    error: str | None = Field(None, max_length=2000)
    # what happened besides a state change, e.g. "page crashed and was replaced"
    detail: str | None = Field(None, max_length=2000)


class DeadLetterReport(Envelope):
    """Worker → Master: something arrived on the worker's control channel that did not
    decode. The Master records it in the stream of worker reports
    (``deadletter:reported``), at most so many a minute per worker: a worker cannot
    write there itself, nor crowd the Master's own refusals out of ``deadletter``."""

    type: Literal["worker:deadletter"] = "worker:deadletter"
    worker_id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    reason: str = Field(max_length=2000)
    raw: str = Field("", max_length=8192)
    raw_len: int = Field(0, ge=0)


Message = Annotated[
    AccountConfigUpdate
    | AccountConfigUpdateAck
    | AccountConfigAcks
    | LoginRequest
    | LoginQrCode
    | LoginProgress
    | LoginSuccess
    | LoginFailed
    | LoginExpired
    | TaskStatus
    | CrawlBatch
    | DeadLetterReport,
    Field(discriminator="type"),
]
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why some bytes are not a message. Carries the raw bytes for the dead-letter stream."""

    reason: str
    raw: bytes


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


def decode(raw: bytes | str) -> Message | DecodeError:
    """Parse one message. Never raises: anything wrong becomes a DecodeError."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_MESSAGE_BYTES:
        return DecodeError(f"message of {len(data)} bytes (limit {MAX_MESSAGE_BYTES})", data)
    try:
        return _adapter.validate_json(data)
    except ValidationError as exc:
        return DecodeError(_summarize(exc), data)
    except (ValueError, TypeError, RecursionError) as exc:  # pragma: no cover - defensive
        return DecodeError(f"undecodable: {type(exc).__name__}", data)


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
