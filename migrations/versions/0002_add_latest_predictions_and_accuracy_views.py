"""Add the latest_predictions and forecast_accuracy views for SQL users.

latest_predictions keeps, per series and target candle, only the forecast made
from the newest as-of candle. forecast_accuracy puts each forecast whose target
candle is stored beside the close that happened and the last-close baseline.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Window functions and these expressions run unchanged on SQLite 3.25+ and Postgres.
LATEST_PREDICTIONS = """
CREATE VIEW latest_predictions AS
SELECT id, exchange, symbol, timeframe, as_of_open_time, target_open_time,
       horizon_step, predicted_close, model_run_id, created_at
FROM (
    SELECT predictions.*,
           ROW_NUMBER() OVER (
               PARTITION BY exchange, symbol, timeframe, target_open_time
               ORDER BY as_of_open_time DESC, model_run_id DESC
           ) AS newest_first
    FROM predictions
) AS ranked
WHERE newest_first = 1
"""

FORECAST_ACCURACY = """
CREATE VIEW forecast_accuracy AS
SELECT p.id AS prediction_id,
       p.exchange, p.symbol, p.timeframe, p.model_run_id,
       p.as_of_open_time, p.target_open_time, p.horizon_step,
       p.predicted_close,
       actual.close AS actual_close,
       as_of.close AS as_of_close,
       p.predicted_close - actual.close AS error,
       abs(p.predicted_close - actual.close) AS absolute_error,
       100.0 * (p.predicted_close - actual.close) / actual.close AS percentage_error,
       100.0 * abs(p.predicted_close - actual.close) / actual.close
           AS absolute_percentage_error,
       abs(as_of.close - actual.close) AS last_close_absolute_error
FROM predictions AS p
JOIN ohlcv AS actual
  ON actual.exchange = p.exchange AND actual.symbol = p.symbol
 AND actual.timeframe = p.timeframe AND actual.open_time = p.target_open_time
JOIN ohlcv AS as_of
  ON as_of.exchange = p.exchange AND as_of.symbol = p.symbol
 AND as_of.timeframe = p.timeframe AND as_of.open_time = p.as_of_open_time
"""


def upgrade() -> None:
    op.execute(LATEST_PREDICTIONS)
    op.execute(FORECAST_ACCURACY)


def downgrade() -> None:
    op.execute("DROP VIEW forecast_accuracy")
    op.execute("DROP VIEW latest_predictions")
