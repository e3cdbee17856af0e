"""SQLAlchemy tables of the store, mirrored by the Alembic migrations in migrations/.

A test checks that these definitions and the migrations do not drift.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    Postgres stores `timestamptz`. SQLite has no timestamp type, so the value is
    stored as naive UTC text such as "2025-03-16 00:00:00.000000".
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: dt.datetime | None, dialect: sa.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value} has no time zone; pass UTC times")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: sa.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _json_type() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _series_columns() -> list[sa.Column[str]]:
    """Return the exchange, symbol and timeframe columns that name a series."""
    return [
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
    ]


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ohlcv = sa.Table(
    "ohlcv",
    metadata,
    sa.Column("exchange", sa.String(64), primary_key=True),
    sa.Column("symbol", sa.String(64), primary_key=True),
    sa.Column("timeframe", sa.String(8), primary_key=True),
    sa.Column("open_time", UTCDateTime(), primary_key=True),
    sa.Column("open", sa.Float(53), nullable=False),
    sa.Column("high", sa.Float(53), nullable=False),
    sa.Column("low", sa.Float(53), nullable=False),
    sa.Column("close", sa.Float(53), nullable=False),
    sa.Column("volume", sa.Float(53), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

model_runs = sa.Table(
    "model_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_series_columns(),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("window_start_open_time", UTCDateTime(), nullable=False),
    sa.Column("window_end_open_time", UTCDateTime(), nullable=False),
    sa.Column("candle_count", sa.Integer, nullable=False),
    sa.Column("hyperparameters", _json_type(), nullable=False),
    sa.Column("preprocessing", _json_type(), nullable=False),
    sa.Column("metrics", _json_type(), nullable=False),
    sa.Column("epochs_trained", sa.Integer, nullable=False),
    sa.Column("training_seconds", sa.Float(53), nullable=False),
    sa.Column("keras_version", sa.String(32), nullable=False),
    sa.Column("model_archive", sa.LargeBinary, nullable=False),
    # Gating: whether this run became the published model when it was trained, and
    # why. A published run that later forecast worse than last close is demoted.
    sa.Column("promoted", sa.Boolean, nullable=True),
    sa.Column("promotion_reason", sa.String(500), nullable=True),
    sa.Column("demoted_at", UTCDateTime(), nullable=True),
    sa.Column("demotion_reason", sa.String(500), nullable=True),
    sa.Index(None, "exchange", "symbol", "timeframe", "window_end_open_time"),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_series_columns(),
    sa.Column("as_of_open_time", UTCDateTime(), nullable=False),
    sa.Column("target_open_time", UTCDateTime(), nullable=False),
    sa.Column("horizon_step", sa.Integer, nullable=False),
    sa.Column("predicted_close", sa.Float(53), nullable=False),
    # NULL for the baselines, which have no trained model.
    sa.Column(
        "model_run_id",
        sa.Integer,
        sa.ForeignKey("model_runs.id", ondelete="CASCADE"),
        nullable=True,
    ),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # "lstm" or a baseline: "last_close", "drift", "seasonal_naive".
    sa.Column("model", sa.String(32), nullable=False, server_default="lstm"),
    sa.Column("lower_80", sa.Float(53), nullable=True),
    sa.Column("upper_80", sa.Float(53), nullable=True),
    sa.Column("lower_95", sa.Float(53), nullable=True),
    sa.Column("upper_95", sa.Float(53), nullable=True),
    # Whether this row belongs to the forecast of record when it was written.
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("model_run_id", "as_of_open_time", "horizon_step"),
    sa.Index(None, "exchange", "symbol", "timeframe", "target_open_time"),
    sa.Index(
        "uq_predictions_baseline_forecast",
        "exchange",
        "symbol",
        "timeframe",
        "model",
        "as_of_open_time",
        "horizon_step",
        unique=True,
        sqlite_where=sa.text("model_run_id IS NULL"),
        postgresql_where=sa.text("model_run_id IS NULL"),
    ),
)

# Candles that failed validation, kept with the reason instead of being stored in
# ohlcv. A row rejected again by a later ingest of the same source is updated.
rejected_candles = sa.Table(
    "rejected_candles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_series_columns(),
    sa.Column("open_time", UTCDateTime(), nullable=False),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("open", sa.Float(53), nullable=True),
    sa.Column("high", sa.Float(53), nullable=True),
    sa.Column("low", sa.Float(53), nullable=True),
    sa.Column("close", sa.Float(53), nullable=True),
    sa.Column("volume", sa.Float(53), nullable=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("rejected_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("exchange", "symbol", "timeframe", "source", "open_time"),
)

# One walk-forward backtest of a series: its range, settings and run time.
backtest_runs = sa.Table(
    "backtest_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_series_columns(),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("first_as_of_open_time", UTCDateTime(), nullable=False),
    sa.Column("last_as_of_open_time", UTCDateTime(), nullable=False),
    sa.Column("retrain_every_candles", sa.Integer, nullable=False),
    sa.Column("hyperparameters", _json_type(), nullable=False),
    sa.Column("retrain_count", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Float(53), nullable=False),
)


def _backtest_run_key() -> sa.Column[int]:
    return sa.Column(
        "backtest_run_id",
        sa.Integer,
        sa.ForeignKey("backtest_runs.id", ondelete="CASCADE"),
        primary_key=True,
    )


# Scores of each model of a backtest at each horizon step.
backtest_metrics = sa.Table(
    "backtest_metrics",
    metadata,
    _backtest_run_key(),
    sa.Column("model", sa.String(32), primary_key=True),
    sa.Column("horizon_step", sa.Integer, primary_key=True),
    sa.Column("forecasts", sa.Integer, nullable=False),
    sa.Column("mae", sa.Float(53), nullable=False),
    sa.Column("rmse", sa.Float(53), nullable=False),
    sa.Column("mape", sa.Float(53), nullable=False),
    sa.Column("mase", sa.Float(53), nullable=False),
    sa.Column("directional_accuracy", sa.Float(53), nullable=True),
    sa.Column("coverage_80", sa.Float(53), nullable=True),
    sa.Column("coverage_95", sa.Float(53), nullable=True),
    sa.Column("mae_ratio_to_last_close", sa.Float(53), nullable=True),
)

# Every forecast a backtest made, beside the close that happened.
backtest_forecasts = sa.Table(
    "backtest_forecasts",
    metadata,
    _backtest_run_key(),
    sa.Column("model", sa.String(32), primary_key=True),
    sa.Column("as_of_open_time", UTCDateTime(), primary_key=True),
    sa.Column("horizon_step", sa.Integer, primary_key=True),
    sa.Column("target_open_time", UTCDateTime(), nullable=False),
    sa.Column("as_of_close", sa.Float(53), nullable=False),
    sa.Column("predicted_close", sa.Float(53), nullable=False),
    sa.Column("actual_close", sa.Float(53), nullable=False),
    sa.Column("lower_80", sa.Float(53), nullable=True),
    sa.Column("upper_80", sa.Float(53), nullable=True),
    sa.Column("lower_95", sa.Float(53), nullable=True),
    sa.Column("upper_95", sa.Float(53), nullable=True),
)
