"""Two processes running the same series at the same moment, on one database."""

import subprocess
import sys

import pytest
import sqlalchemy as sa

from btc_lstm.store import model_runs, ohlcv, predictions
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
from btc_lstm.store import create_db_engine
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


def test_two_pipelines_at_once_store_each_row_once(
    database_url, open_engine, tmp_path
):
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
    assert count_rows(engine, predictions) == 3
