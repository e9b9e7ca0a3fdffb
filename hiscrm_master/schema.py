"""The tables of crawled data, for a CRM team to query (SQLAlchemy Core; the migrations
in ``hiscrm_master/migrations`` create them).

Every item is keyed by (account, platform item id) within its kind's table, so writing
a batch twice stores it once. ``received_at`` is when the Master's Redis received the
batch (the stream entry's clock): removals compare against it. Times are UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

ID = 200  # the longest id any message carries (account, item, work, conversation)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both engines (SQLite keeps no zone: it stores
    UTC and gets the zone back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Payload = JSON().with_variant(JSONB(), "postgresql")
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# one row per account that ever had data or was removed: ``removed_at_ms`` (Redis'
# clock) refuses batches that Redis received before the removal
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(ID), primary_key=True),
    Column("removed_at_ms", BigInteger, nullable=True),
)

works = Table(
    "works",
    metadata,
    Column("account_id", String(ID), primary_key=True),
    Column("work_id", String(ID), primary_key=True),
    Column("title", Text, nullable=False, default=""),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
)

comments = Table(
    "comments",
    metadata,
    Column("id", Integer().with_variant(BigInteger, "postgresql"), primary_key=True),
    Column("account_id", String(ID), nullable=False),
    Column("item_id", String(ID), nullable=False),
    Column("work_id", String(ID), nullable=True),
    Column("parent_id", String(ID), nullable=True),  # the comment this one replies to
    Column("author_id", String(ID), nullable=True),
    Column("author", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("like_count", Integer, nullable=True),
    Column("reply_count", Integer, nullable=True),
    Column("raw", Payload, nullable=False),  # the item as the worker sent it
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("account_id", "item_id"),
    Index(None, "account_id", "created_at"),
    Index(None, "account_id", "work_id"),
    Index(None, "account_id", "author_id"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("account_id", String(ID), primary_key=True),
    Column("conversation_id", String(ID), primary_key=True),
    Column("peer_id", String(ID), nullable=True),  # the other side, as its last message named
    Column("peer", Text, nullable=False, default=""),
    Column("last_message_at", UtcDateTime, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer().with_variant(BigInteger, "postgresql"), primary_key=True),
    Column("account_id", String(ID), nullable=False),
    Column("item_id", String(ID), nullable=False),
    Column("conversation_id", String(ID), nullable=True),
    Column("sender_id", String(ID), nullable=True),
    Column("author", Text, nullable=False),
    Column("direction", String(8), nullable=True),  # in / out
    Column("text", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("raw", Payload, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("account_id", "item_id"),
    Index(None, "account_id", "created_at"),
    Index(None, "account_id", "conversation_id"),
)

# one row per crawl batch the Master stored (a crawl that found nothing sends none), and
# one per crawl error a worker reported
crawl_runs = Table(
    "crawl_runs",
    metadata,
    Column("id", Integer().with_variant(BigInteger, "postgresql"), primary_key=True),
    Column("message_id", String(64), nullable=False),  # the batch or event: stored once
    Column("account_id", String(ID), nullable=False),
    Column("worker_id", String(ID), nullable=False),
    Column("crawled_at", UtcDateTime, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("found", Integer, nullable=False, default=0),
    Column("new_items", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    UniqueConstraint("message_id"),
    Index(None, "account_id", "crawled_at"),
)

ITEM_TABLES = {"comment": comments, "dm": messages}
