"""Crawled data: works, comments, conversations, messages, crawl runs, removal marks,
and the full-text indexes for ``hiscrm data --grep``.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from hiscrm_master.schema import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 200
BIG_ID = sa.Integer().with_variant(sa.BigInteger, "postgresql")
PAYLOAD = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(ID), primary_key=True),
        sa.Column("removed_at_ms", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("account_id", name="pk_accounts"),
    )
    op.create_table(
        "works",
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("work_id", sa.String(ID), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("first_seen_at", UtcDateTime, nullable=False),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "work_id", name="pk_works"),
    )
    item_tables: tuple[tuple[str, list[sa.Column[Any]]], ...] = (
        (
            "comments",
            [
                sa.Column("work_id", sa.String(ID), nullable=True),
                sa.Column("parent_id", sa.String(ID), nullable=True),
                sa.Column("author_id", sa.String(ID), nullable=True),
                sa.Column("author", sa.Text, nullable=False),
                sa.Column("text", sa.Text, nullable=False),
                sa.Column("created_at", UtcDateTime, nullable=False),
                sa.Column("like_count", sa.Integer, nullable=True),
                sa.Column("reply_count", sa.Integer, nullable=True),
            ],
        ),
        (
            "messages",
            [
                sa.Column("conversation_id", sa.String(ID), nullable=True),
                sa.Column("sender_id", sa.String(ID), nullable=True),
                sa.Column("author", sa.Text, nullable=False),
                sa.Column("direction", sa.String(8), nullable=True),
                sa.Column("text", sa.Text, nullable=False),
                sa.Column("created_at", UtcDateTime, nullable=False),
            ],
        ),
    )
    for table, columns in item_tables:
        op.create_table(
            table,
            sa.Column("id", BIG_ID, nullable=False),
            sa.Column("account_id", sa.String(ID), nullable=False),
            sa.Column("item_id", sa.String(ID), nullable=False),
            *columns,
            sa.Column("raw", PAYLOAD, nullable=False),
            sa.Column("received_at", UtcDateTime, nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("account_id", "item_id", name=f"uq_{table}_account_id_item_id"),
        )
        op.create_index(f"ix_{table}_account_id_created_at", table, ["account_id", "created_at"])
    op.create_index("ix_comments_account_id_work_id", "comments", ["account_id", "work_id"])
    op.create_index("ix_comments_account_id_author_id", "comments", ["account_id", "author_id"])
    op.create_index(
        "ix_messages_account_id_conversation_id", "messages", ["account_id", "conversation_id"]
    )
    op.create_table(
        "conversations",
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("conversation_id", sa.String(ID), nullable=False),
        sa.Column("peer_id", sa.String(ID), nullable=True),
        sa.Column("peer", sa.Text, nullable=False),
        sa.Column("last_message_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "conversation_id", name="pk_conversations"),
    )
    op.create_table(
        "crawl_runs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("worker_id", sa.String(ID), nullable=False),
        sa.Column("crawled_at", UtcDateTime, nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("found", sa.Integer, nullable=False),
        sa.Column("new_items", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_crawl_runs"),
        sa.UniqueConstraint("message_id", name="uq_crawl_runs_message_id"),
    )
    op.create_index(
        "ix_crawl_runs_account_id_crawled_at", "crawl_runs", ["account_id", "crawled_at"]
    )
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_full_text()
    else:
        _postgresql_full_text()


def _sqlite_full_text() -> None:
    # FTS5's trigram tokenizer finds any substring of 3+ characters, in any language
    # (Chinese has no spaces to split words at); an external-content table kept in
    # step by triggers
    for table in ("comments", "messages"):
        op.execute(
            f"CREATE VIRTUAL TABLE {table}_fts USING fts5("
            f"text, content='{table}', content_rowid='id', tokenize='trigram')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_fts_insert AFTER INSERT ON {table} BEGIN "
            f"INSERT INTO {table}_fts(rowid, text) VALUES (new.id, new.text); END"
        )
        op.execute(
            f"CREATE TRIGGER {table}_fts_delete AFTER DELETE ON {table} BEGIN "
            f"INSERT INTO {table}_fts({table}_fts, rowid, text) "
            f"VALUES ('delete', old.id, old.text); END"
        )
        op.execute(
            f"CREATE TRIGGER {table}_fts_update AFTER UPDATE OF text ON {table} BEGIN "
            f"INSERT INTO {table}_fts({table}_fts, rowid, text) "
            f"VALUES ('delete', old.id, old.text); "
            f"INSERT INTO {table}_fts(rowid, text) VALUES (new.id, new.text); END"
        )


def _postgresql_full_text() -> None:
    # pg_trgm (a trusted extension: the database's owner may create it) indexes ILIKE
    # '%…%' for any language
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for table in ("comments", "messages"):
        op.execute(f"CREATE INDEX ix_{table}_text_trgm ON {table} USING gin (text gin_trgm_ops)")


def downgrade() -> None:
    for table in ("crawl_runs", "conversations", "messages", "comments", "works", "accounts"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "sqlite":
        for table in ("comments", "messages"):
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
