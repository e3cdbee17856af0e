"""Add the rejected_candles table: candles that failed validation, with the reason.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
PRICE = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "rejected_candles",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("exchange", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
        sa.Column("open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        *[
            sa.Column(name, PRICE, nullable=True)
            for name in ["open", "high", "low", "close", "volume"]
        ],
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("rejected_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_candles")),
        sa.UniqueConstraint(
            "exchange",
            "symbol",
            "timeframe",
            "source",
            "open_time",
            name=op.f("uq_rejected_candles_exchange_symbol_timeframe_source_open_time"),
        ),
    )


def downgrade() -> None:
    op.drop_table("rejected_candles")
