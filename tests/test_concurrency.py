"""Runs that overlap or die midway: each row is stored once, or not at all."""

import datetime as dt
import json
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.forecast import forecast_series
from btc_lstm.settings import load_settings
from btc_lstm.store import upsert_candles
from btc_lstm.store.schema import model_runs, ohlcv, predictions
from btc_lstm.train import train_series
from tests.conftest import REPOSITORY, make_candles

pytestmark = pytest.mark.slow

PIPELINE = """
import sys
from pathlib import Path

from btc_lstm.candles import Series
from btc_lstm.forecast import forecast_series
from btc_lstm.ingest import import_candle_file
from btc_lstm.migrate import upgrade_database
from btc_lstm.settings import load_settings
from btc_lstm.store.connection import create_db_engine
from btc_lstm.train import train_series

settings = load_settings(
    window_candles=120, lookback_candles=10, horizon_candles=3, epochs=2
)
engine = create_db_engine(settings.database_url)
upgrade_database(engine)
result = import_candle_file(engine, Path(sys.argv[1]), "binance", "BTC/USDT")
series = Series("binance", "BTC/USDT", "1d")
train_series(engine, settings, series)
forecast_series(engine, series)
engine.dispose()
"""


def count_rows(engine, table):
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(table)
        ).scalar_one()


def test_two_pipelines_at_once_store_each_row_once(database_url, open_engine, tmp_path):
    csv_path = tmp_path / "candles.csv"
    make_candles(150).rename(columns={"open_time": "timestamp"}).to_csv(
        csv_path, index=False
    )
    environment = {"BTC_LSTM_DATABASE_URL": database_url, "PATH": ""}

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PIPELINE, str(csv_path)],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=300) for process in processes]

    for process, (_, stderr) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    engine = open_engine(database_url)
    assert count_rows(engine, ohlcv) == 150
    assert count_rows(engine, model_runs) == 1
    assert count_rows(engine, predictions) == 3 * 4


KILLED_WRITER = """
import datetime as dt
import json
import os
import signal
import sys

from btc_lstm.store.connection import create_db_engine
from btc_lstm.store.schema import predictions

engine = create_db_engine(sys.argv[1])
rows = json.loads(sys.argv[2])
for row in rows:
    for key in ("as_of_open_time", "target_open_time", "created_at"):
        row[key] = dt.datetime.fromisoformat(row[key])
with engine.begin() as connection:
    connection.execute(predictions.insert(), rows[:2])
    # The process dies after part of the forecast is written, before COMMIT.
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_forecast_write_leaves_no_rows(engine, database_url):
    series = Series("binance", "BTC/USDT", "1d")
    candles = make_candles(150)
    upsert_candles(engine, series, candles)
    settings = load_settings(
        window_candles=120, lookback_candles=10, horizon_candles=3, epochs=2
    )
    run = train_series(engine, settings, series)
    as_of = candles["open_time"].iloc[-1]
    partial_forecast = [
        {
            "exchange": "binance",
            "symbol": "BTC/USDT",
            "timeframe": "1d",
            "as_of_open_time": as_of.isoformat(),
            "target_open_time": (as_of + dt.timedelta(days=step)).isoformat(),
            "horizon_step": step,
            "predicted_close": 1.0,
            "model_run_id": run.model_run_id,
            "created_at": as_of.isoformat(),
        }
        for step in (1, 2, 3)
    ]

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_WRITER,
            database_url,
            json.dumps(partial_forecast),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert count_rows(engine, predictions) == 0
    result = forecast_series(engine, series)
    assert result.rows_written == 3 * 4
    assert count_rows(engine, predictions) == 3 * 4
