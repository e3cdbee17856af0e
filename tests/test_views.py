"""The SQL views that analysts query: latest_predictions and forecast_accuracy."""

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.store import insert_model_run, insert_predictions, upsert_candles
from tests.conftest import make_candles

SERIES = Series("binance", "BTC/USDT", "1d")
DAY = pd.Timedelta(days=1)


def add_model_run(engine, window_end):
    return insert_model_run(
        engine,
        {
            "exchange": SERIES.exchange,
            "symbol": SERIES.symbol,
            "timeframe": SERIES.timeframe,
            "created_at": dt.datetime.now(dt.UTC),
            "window_start_open_time": window_end - dt.timedelta(days=100),
            "window_end_open_time": window_end,
            "candle_count": 100,
            "hyperparameters": {},
            "preprocessing": {},
            "metrics": {},
            "epochs_trained": 1,
            "training_seconds": 0.1,
            "keras_version": "test",
            "model_archive": b"not a model",
        },
    )


def add_forecast(engine, run_id, as_of, closes, published=True):
    insert_predictions(
        engine,
        [
            {
                "exchange": SERIES.exchange,
                "symbol": SERIES.symbol,
                "timeframe": SERIES.timeframe,
                "as_of_open_time": as_of.to_pydatetime(),
                "target_open_time": (as_of + step * DAY).to_pydatetime(),
                "horizon_step": step,
                "predicted_close": close,
                "model_run_id": run_id,
                "created_at": dt.datetime.now(dt.UTC),
                "published": published,
            }
            for step, close in enumerate(closes, start=1)
        ],
    )


def query(engine, sql):
    with engine.connect() as connection:
        return connection.execute(sa.text(sql)).mappings().all()


@pytest.fixture
def candles(engine):
    stored = make_candles(20)
    upsert_candles(engine, SERIES, stored)
    return stored


def test_latest_predictions_keeps_newest_forecast(engine, candles):
    day_10 = candles["open_time"].iloc[9]
    first_run = add_model_run(engine, day_10.to_pydatetime())
    second_run = add_model_run(engine, (day_10 + DAY).to_pydatetime())
    add_forecast(engine, first_run, day_10, [1.0, 2.0, 3.0])
    add_forecast(engine, second_run, day_10 + DAY, [20.0, 30.0, 40.0])

    rows = query(
        engine,
        "SELECT target_open_time, predicted_close, model_run_id "
        "FROM latest_predictions ORDER BY target_open_time",
    )

    assert [row["predicted_close"] for row in rows] == [1.0, 20.0, 30.0, 40.0]
    assert [row["model_run_id"] for row in rows] == [
        first_run,
        second_run,
        second_run,
        second_run,
    ]


def test_forecast_accuracy_errors(engine, candles):
    as_of = candles["open_time"].iloc[9]
    run_id = add_model_run(engine, as_of.to_pydatetime())
    actual = candles["close"].iloc[10]
    as_of_close = candles["close"].iloc[9]
    add_forecast(engine, run_id, as_of, [actual * 1.1])

    (row,) = query(engine, "SELECT * FROM forecast_accuracy")

    assert row["horizon_step"] == 1
    assert row["actual_close"] == pytest.approx(actual)
    assert row["as_of_close"] == pytest.approx(as_of_close)
    assert row["error"] == pytest.approx(actual * 0.1)
    assert row["absolute_error"] == pytest.approx(actual * 0.1)
    assert row["percentage_error"] == pytest.approx(10.0)
    assert row["absolute_percentage_error"] == pytest.approx(10.0)
    assert row["last_close_absolute_error"] == pytest.approx(abs(as_of_close - actual))


def test_forecast_accuracy_skips_future_targets(engine, candles):
    last = candles["open_time"].iloc[-1]
    run_id = add_model_run(engine, last.to_pydatetime())
    add_forecast(engine, run_id, last, [1.0, 2.0])

    assert query(engine, "SELECT * FROM forecast_accuracy") == []
