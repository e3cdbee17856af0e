"""Create the ohlcv, model_runs and predictions tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Timestamps are UTC: timestamptz on Postgres, naive UTC text on SQLite.
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PRICE = sa.Float(precision=53)


def series_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("exchange", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "ohlcv",
        *series_columns(),
        sa.Column("open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("open", PRICE, nullable=False),
        sa.Column("high", PRICE, nullable=False),
        sa.Column("low", PRICE, nullable=False),
        sa.Column("close", PRICE, nullable=False),
        sa.Column("volume", PRICE, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "exchange", "symbol", "timeframe", "open_time", name=op.f("pk_ohlcv")
        ),
    )

    op.create_table(
        "model_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        *series_columns(),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("window_start_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("window_end_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("candle_count", sa.Integer(), nullable=False),
        sa.Column("hyperparameters", JSON_DOCUMENT, nullable=False),
        sa.Column("preprocessing", JSON_DOCUMENT, nullable=False),
        sa.Column("metrics", JSON_DOCUMENT, nullable=False),
        sa.Column("epochs_trained", sa.Integer(), nullable=False),
        sa.Column("training_seconds", sa.Float(precision=53), nullable=False),
        sa.Column("keras_version", sa.String(length=32), nullable=False),
        sa.Column("model_archive", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_runs")),
    )
    op.create_index(
        op.f("ix_model_runs_exchange_symbol_timeframe_window_end_open_time"),
        "model_runs",
        ["exchange", "symbol", "timeframe", "window_end_open_time"],
    )

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        *series_columns(),
        sa.Column("as_of_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("target_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("horizon_step", sa.Integer(), nullable=False),
        sa.Column("predicted_close", PRICE, nullable=False),
        sa.Column("model_run_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_run_id"],
            ["model_runs.id"],
            name=op.f("fk_predictions_model_run_id_model_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "model_run_id",
            "as_of_open_time",
            "horizon_step",
            name=op.f("uq_predictions_model_run_id_as_of_open_time_horizon_step"),
        ),
    )
    op.create_index(
        op.f("ix_predictions_exchange_symbol_timeframe_target_open_time"),
        "predictions",
        ["exchange", "symbol", "timeframe", "target_open_time"],
    )


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("model_runs")
    op.drop_table("ohlcv")
