import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.errors import ForecastError, ModelNotFoundError
from btc_lstm.forecast import forecast_series
from btc_lstm.store import load_latest_forecast, upsert_candles
from btc_lstm.store.schema import model_runs, predictions
from btc_lstm.train import train_series
from tests.conftest import make_candles
from tests.factories import small_settings

SERIES = Series("binance", "BTC/USDT", "1d")

pytestmark = pytest.mark.slow


def count_predictions(engine):
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(predictions)
        ).scalar_one()


@pytest.fixture
def trained(engine):
    candles = make_candles(150)
    upsert_candles(engine, SERIES, candles)
    run = train_series(engine, small_settings(), SERIES)
    return candles, run


def test_forecast_without_model_says_what_to_run(engine):
    upsert_candles(engine, SERIES, make_candles(30))

    with pytest.raises(ModelNotFoundError, match="run `btc-lstm train`"):
        forecast_series(engine, SERIES)


def test_forecast_targets_follow_last_candle(engine, trained):
    candles, run = trained

    result = forecast_series(engine, SERIES)
    rows = load_latest_forecast(engine, SERIES)

    last = candles["open_time"].iloc[-1]
    assert result.rows_written == 3
    assert list(rows["horizon_step"]) == [1, 2, 3]
    assert list(rows["target_open_time"]) == [
        last + pd.Timedelta(days=step) for step in (1, 2, 3)
    ]
    assert (rows["as_of_open_time"] == last).all()
    assert (rows["model_run_id"] == run.model_run_id).all()
    assert (rows["predicted_close"] > 0).all()


def test_forecast_twice_adds_nothing(engine, trained):
    forecast_series(engine, SERIES)

    again = forecast_series(engine, SERIES)

    assert again.rows_written == 0
    assert count_predictions(engine) == 3


def test_new_candle_gets_new_forecast(engine, trained):
    candles, _ = trained
    forecast_series(engine, SERIES)
    upsert_candles(engine, SERIES, make_candles(151).iloc[[-1]])

    result = forecast_series(engine, SERIES)

    assert result.rows_written == 3
    assert count_predictions(engine) == 6
    newest = load_latest_forecast(engine, SERIES)
    assert newest["as_of_open_time"].iloc[0] == candles["open_time"].iloc[
        -1
    ] + pd.Timedelta(days=1)


def test_same_seed_gives_same_forecast(engine, open_engine, tmp_path):
    candles = make_candles(150)
    forecasts = []
    for name in ("first", "second"):
        other = open_engine(f"sqlite:///{tmp_path / name}.db")
        from btc_lstm.migrate import upgrade_database

        upgrade_database(other)
        upsert_candles(other, SERIES, candles)
        train_series(other, small_settings(), SERIES)
        forecast_series(other, SERIES)
        forecasts.append(
            load_latest_forecast(other, SERIES)["predicted_close"].tolist()
        )

    assert forecasts[0] == forecasts[1]


def test_overflowing_model_stores_no_forecast(engine, trained):
    with engine.begin() as connection:
        run = connection.execute(sa.select(model_runs)).mappings().one()
        preprocessing = dict(run["preprocessing"])
        preprocessing["target_scaler"] = {"mean": [1e6] * 3, "std": [1.0] * 3}
        connection.execute(model_runs.update().values(preprocessing=preprocessing))

    with pytest.raises(ForecastError, match="predicted invalid closes"):
        forecast_series(engine, SERIES)

    assert count_predictions(engine) == 0
