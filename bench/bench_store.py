"""Measure the upsert path and the forecast views on one database.

Loads the four shared Binance daily files through `import_candle_file`, then a
generated multi-symbol set of hourly candles through `upsert_candles`, then fills
`predictions` with a year of daily forecasts per symbol and times queries on the
`latest_predictions` and `forecast_accuracy` views. Prints a Markdown table.

Usage:
    python bench/bench_store.py --database-url sqlite:////tmp/bench.db
    python bench/bench_store.py --database-url postgresql://postgres@127.0.0.1/bench

The database must be empty; the script creates the tables itself.
"""

import argparse
import datetime as dt
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.ingest import import_candle_file
from btc_lstm.migrate import upgrade_database
from btc_lstm.store import insert_model_run, insert_predictions, upsert_candles
from btc_lstm.store.connection import create_db_engine

SHARED_CANDLES = Path(__file__).resolve().parents[2] / "shared/data/binance_daily"
SHARED_FILES = ["BTCUSDT", "ETHUSDT", "LTCUSDT", "XRPUSDT"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--generated-rows", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--forecast-days", type=int, default=365)
    arguments = parser.parse_args()

    engine = create_db_engine(arguments.database_url)
    upgrade_database(engine)
    loads = [
        measure_shared_files(engine),
        measure_generated_candles(engine, arguments.generated_rows, arguments.symbols),
        measure_predictions(engine, arguments.symbols, arguments.forecast_days),
    ]
    if engine.dialect.name == "postgresql":
        # Refresh planner statistics, as autovacuum would after a bulk load.
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    queries = measure_views(engine)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"database: {engine.dialect.name}, peak memory {peak_mib:.0f} MiB")
    print("| load | rows | seconds | rows per second |")
    print("| --- | ---: | ---: | ---: |")
    for step, rows, seconds in loads:
        print(f"| {step} | {rows:,} | {seconds:.1f} | {rows / seconds:,.0f} |")
    print()
    print("| query | rows returned | median milliseconds |")
    print("| --- | ---: | ---: |")
    for name, rows, seconds in queries:
        print(f"| {name} | {rows:,} | {seconds * 1000:.1f} |")
    engine.dispose()


def measure_shared_files(engine: sa.Engine) -> tuple[str, int, float]:
    started = time.perf_counter()
    stored = 0
    for name in SHARED_FILES:
        path = SHARED_CANDLES / f"Binance_{name}_d.csv"
        stored += import_candle_file(engine, path).inserted
    return "import-csv of the four shared daily files", stored, elapsed(started)


def measure_generated_candles(
    engine: sa.Engine, total_rows: int, symbol_count: int
) -> tuple[str, int, float]:
    rows_per_symbol = total_rows // symbol_count
    random = np.random.default_rng(1)
    started = time.perf_counter()
    for index in range(symbol_count):
        closes = 100 * np.exp(np.cumsum(random.normal(0, 0.01, rows_per_symbol)))
        candles = pd.DataFrame(
            {
                "open_time": pd.date_range(
                    "2015-01-01", periods=rows_per_symbol, freq="h", tz="UTC"
                ),
                "open": closes,
                "high": closes * 1.01,
                "low": closes * 0.99,
                "close": closes,
                "volume": 1.0,
            }
        )
        series = Series("generated", f"SYM{index}/USDT", "1h")
        upsert_candles(engine, series, candles)
    step = f"upsert of {symbol_count} generated 1h series"
    return step, rows_per_symbol * symbol_count, elapsed(started)


FIRST_FORECAST_DAY = pd.Timestamp("2023-01-01", tz="UTC")


def measure_predictions(
    engine: sa.Engine, symbol_count: int, forecast_days: int
) -> tuple[str, int, float]:
    """Store daily candles and 7-step daily forecasts for every symbol."""
    horizon = 7
    first_day = FIRST_FORECAST_DAY
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for index in range(symbol_count):
        series = Series("generated", f"SYM{index}/USDT", "1d")
        days = pd.date_range(first_day, periods=forecast_days + horizon, freq="D")
        closes = np.linspace(100, 200, len(days))
        candles = pd.DataFrame(
            {
                "open_time": days,
                "open": closes,
                "high": closes,
                "low": closes,
                "close": closes,
                "volume": 1.0,
            }
        )
        upsert_candles(engine, series, candles)
        run_id = insert_model_run(
            engine,
            {
                "exchange": series.exchange,
                "symbol": series.symbol,
                "timeframe": series.timeframe,
                "created_at": now,
                "window_start_open_time": days[0].to_pydatetime(),
                "window_end_open_time": days[-1].to_pydatetime(),
                "candle_count": len(days),
                "hyperparameters": {},
                "preprocessing": {},
                "metrics": {},
                "epochs_trained": 1,
                "training_seconds": 0.0,
                "keras_version": "benchmark",
                "model_archive": b"benchmark",
            },
        )
        rows = [
            {
                "exchange": series.exchange,
                "symbol": series.symbol,
                "timeframe": series.timeframe,
                "as_of_open_time": as_of.to_pydatetime(),
                "target_open_time": (as_of + pd.Timedelta(days=step)).to_pydatetime(),
                "horizon_step": step,
                "predicted_close": 150.0,
                "model_run_id": run_id,
                "created_at": now,
            }
            for as_of in days[:forecast_days]
            for step in range(1, horizon + 1)
        ]
        insert_predictions(engine, rows)
    prediction_rows = symbol_count * forecast_days * horizon
    step = f"insert of {forecast_days} days of forecasts for {symbol_count} series"
    return step, prediction_rows, elapsed(started)


def measure_views(engine: sa.Engine) -> list[tuple[str, int, float]]:
    """Time the views on the forecasts that `measure_predictions` stored."""
    queries = {
        "latest_predictions, one symbol": (
            "SELECT * FROM latest_predictions WHERE exchange = 'generated' "
            "AND symbol = 'SYM0/USDT' AND timeframe = '1d'"
        ),
        "latest_predictions, all symbols": "SELECT * FROM latest_predictions",
        "forecast_accuracy, MAE by step over one month": (
            "SELECT horizon_step, avg(absolute_error) FROM forecast_accuracy "
            "WHERE target_open_time >= :month_start GROUP BY horizon_step"
        ),
    }
    month_start = FIRST_FORECAST_DAY + pd.Timedelta(days=335)
    parameters = {"month_start": month_start.to_pydatetime()}
    results = []
    for name, sql in queries.items():
        seconds, rows_returned = time_query(engine, sql, parameters)
        results.append((name, rows_returned, seconds))
    return results


def time_query(
    engine: sa.Engine, sql: str, parameters: dict[str, object], repeats: int = 5
) -> tuple[float, int]:
    """Return the median seconds of `repeats` runs and the rows returned."""
    durations = []
    row_count = 0
    statement = sa.text(sql)
    if ":month_start" in sql and engine.dialect.name == "sqlite":
        # SQLite compares timestamps as text, in the format the store writes.
        parameters = {
            "month_start": parameters["month_start"]
            .replace(tzinfo=None)  # type: ignore[attr-defined]
            .strftime("%Y-%m-%d %H:%M:%S.%f")
        }
    for _ in range(repeats):
        started = time.perf_counter()
        with engine.connect() as connection:
            row_count = len(connection.execute(statement, parameters).all())
        durations.append(elapsed(started))
    return statistics.median(durations), row_count


def elapsed(started: float) -> float:
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
