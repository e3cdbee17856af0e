"""Add baselines, gating, intervals and backtest results.

predictions gains a model column (the LSTM or a baseline, whose rows have no model
run), 80% and 95% interval bounds, and a published flag for the forecast of record.
model_runs records whether each run was promoted or later demoted, and why. The
backtest_runs, backtest_metrics and backtest_forecasts tables keep walk-forward
backtests. The views are rebuilt: latest_predictions shows the forecast of record,
and forecast_accuracy names the model and whether the close fell in each interval.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PRICE = sa.Float(precision=53)
INTERVAL_COLUMNS = ["lower_80", "upper_80", "lower_95", "upper_95"]

# The forecast of record: per series and target candle, the published forecast made
# from the newest as-of candle.
LATEST_PREDICTIONS = """
CREATE VIEW latest_predictions AS
SELECT id, exchange, symbol, timeframe, model, as_of_open_time, target_open_time,
       horizon_step, predicted_close, lower_80, upper_80, lower_95, upper_95,
       model_run_id, created_at
FROM (
    SELECT predictions.*,
           ROW_NUMBER() OVER (
               PARTITION BY exchange, symbol, timeframe, target_open_time
               ORDER BY as_of_open_time DESC, id DESC
           ) AS newest_first
    FROM predictions
    WHERE published
) AS ranked
WHERE newest_first = 1
"""

FORECAST_ACCURACY = """
CREATE VIEW forecast_accuracy AS
SELECT p.id AS prediction_id,
       p.exchange, p.symbol, p.timeframe, p.model, p.published, p.model_run_id,
       p.as_of_open_time, p.target_open_time, p.horizon_step,
       p.predicted_close,
       actual.close AS actual_close,
       as_of.close AS as_of_close,
       p.predicted_close - actual.close AS error,
       abs(p.predicted_close - actual.close) AS absolute_error,
       100.0 * (p.predicted_close - actual.close) / actual.close AS percentage_error,
       100.0 * abs(p.predicted_close - actual.close) / actual.close
           AS absolute_percentage_error,
       abs(as_of.close - actual.close) AS last_close_absolute_error,
       CASE WHEN p.lower_80 IS NULL THEN NULL
            WHEN actual.close BETWEEN p.lower_80 AND p.upper_80 THEN 1 ELSE 0
       END AS inside_80,
       CASE WHEN p.lower_95 IS NULL THEN NULL
            WHEN actual.close BETWEEN p.lower_95 AND p.upper_95 THEN 1 ELSE 0
       END AS inside_95
FROM predictions AS p
JOIN ohlcv AS actual
  ON actual.exchange = p.exchange AND actual.symbol = p.symbol
 AND actual.timeframe = p.timeframe AND actual.open_time = p.target_open_time
JOIN ohlcv AS as_of
  ON as_of.exchange = p.exchange AND as_of.symbol = p.symbol
 AND as_of.timeframe = p.timeframe AND as_of.open_time = p.as_of_open_time
"""


def _series_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("exchange", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
    ]


def upgrade() -> None:
    op.execute("DROP VIEW forecast_accuracy")
    op.execute("DROP VIEW latest_predictions")

    # Plain ALTER TABLE, never batch mode, on model_runs: rebuilding it on SQLite
    # would drop the old table, and ON DELETE CASCADE would empty predictions.
    op.add_column("model_runs", sa.Column("promoted", sa.Boolean(), nullable=True))
    op.add_column(
        "model_runs",
        sa.Column("promotion_reason", sa.String(length=500), nullable=True),
    )
    op.add_column("model_runs", sa.Column("demoted_at", UTC_TIMESTAMP, nullable=True))
    op.add_column(
        "model_runs",
        sa.Column("demotion_reason", sa.String(length=500), nullable=True),
    )

    # SQLite cannot drop NOT NULL in place, so batch mode copies the table.
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("model_run_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(
            sa.Column(
                "model", sa.String(length=32), nullable=False, server_default="lstm"
            )
        )
        for name in INTERVAL_COLUMNS:
            batch.add_column(sa.Column(name, PRICE, nullable=True))
        batch.add_column(
            sa.Column(
                "published", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    # Before gating existed, every forecast was the forecast of record.
    op.execute("UPDATE predictions SET published = TRUE")
    op.create_index(
        "uq_predictions_baseline_forecast",
        "predictions",
        ["exchange", "symbol", "timeframe", "model", "as_of_open_time", "horizon_step"],
        unique=True,
        sqlite_where=sa.text("model_run_id IS NULL"),
        postgresql_where=sa.text("model_run_id IS NULL"),
    )

    op.create_table(
        "backtest_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        *_series_columns(),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("first_as_of_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_as_of_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("retrain_every_candles", sa.Integer(), nullable=False),
        sa.Column("hyperparameters", JSON_DOCUMENT, nullable=False),
        sa.Column("retrain_count", sa.Integer(), nullable=False),
        sa.Column("seconds", PRICE, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backtest_runs")),
    )
    op.create_table(
        "backtest_metrics",
        sa.Column("backtest_run_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("horizon_step", sa.Integer(), nullable=False),
        sa.Column("forecasts", sa.Integer(), nullable=False),
        *[
            sa.Column(name, PRICE, nullable=False)
            for name in ["mae", "rmse", "mape", "mase"]
        ],
        *[
            sa.Column(name, PRICE, nullable=True)
            for name in [
                "directional_accuracy",
                "coverage_80",
                "coverage_95",
                "mae_ratio_to_last_close",
            ]
        ],
        sa.ForeignKeyConstraint(
            ["backtest_run_id"],
            ["backtest_runs.id"],
            name=op.f("fk_backtest_metrics_backtest_run_id_backtest_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "backtest_run_id", "model", "horizon_step", name=op.f("pk_backtest_metrics")
        ),
    )
    op.create_table(
        "backtest_forecasts",
        sa.Column("backtest_run_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("as_of_open_time", UTC_TIMESTAMP, nullable=False),
        sa.Column("horizon_step", sa.Integer(), nullable=False),
        sa.Column("target_open_time", UTC_TIMESTAMP, nullable=False),
        *[
            sa.Column(name, PRICE, nullable=False)
            for name in ["as_of_close", "predicted_close", "actual_close"]
        ],
        *[sa.Column(name, PRICE, nullable=True) for name in INTERVAL_COLUMNS],
        sa.ForeignKeyConstraint(
            ["backtest_run_id"],
            ["backtest_runs.id"],
            name=op.f("fk_backtest_forecasts_backtest_run_id_backtest_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "backtest_run_id",
            "model",
            "as_of_open_time",
            "horizon_step",
            name=op.f("pk_backtest_forecasts"),
        ),
    )

    op.execute(LATEST_PREDICTIONS)
    op.execute(FORECAST_ACCURACY)


def downgrade() -> None:
    op.execute("DROP VIEW forecast_accuracy")
    op.execute("DROP VIEW latest_predictions")
    op.drop_table("backtest_forecasts")
    op.drop_table("backtest_metrics")
    op.drop_table("backtest_runs")

    op.drop_index("uq_predictions_baseline_forecast", table_name="predictions")
    # Baseline rows have no model run and cannot stay once it is required again.
    op.execute("DELETE FROM predictions WHERE model_run_id IS NULL")
    with op.batch_alter_table("predictions") as batch:
        for name in ["published", *INTERVAL_COLUMNS, "model"]:
            batch.drop_column(name)
        batch.alter_column("model_run_id", existing_type=sa.Integer(), nullable=False)
    # ALTER TABLE DROP COLUMN needs SQLite 3.35 or newer; see upgrade() for why
    # model_runs is not rebuilt in batch mode.
    for name in ["demotion_reason", "demoted_at", "promotion_reason", "promoted"]:
        op.drop_column("model_runs", name)

    views = importlib.import_module(
        "btc_lstm.migrations.versions.0002_add_latest_predictions_and_accuracy_views"
    )
    op.execute(views.LATEST_PREDICTIONS)
    op.execute(views.FORECAST_ACCURACY)
