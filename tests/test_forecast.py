import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.errors import (
    ForecastError,
    InsufficientHistoryError,
    ModelNotFoundError,
)
from btc_lstm.forecast import forecast_series
from btc_lstm.store import (
    load_latest_forecast,
    load_published_model_run,
    upsert_candles,
)
from btc_lstm.store.schema import model_runs, ohlcv, predictions
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
    rows = load_latest_forecast(engine, SERIES, model="lstm")

    last = candles["open_time"].iloc[-1]
    # Three steps each of the LSTM and the three baselines.
    assert result.rows_written == 12
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
    assert count_predictions(engine) == 12


def test_new_candle_gets_new_forecast(engine, trained):
    candles, _ = trained
    forecast_series(engine, SERIES)
    upsert_candles(engine, SERIES, make_candles(151).iloc[[-1]])

    result = forecast_series(engine, SERIES)

    assert result.rows_written == 12
    assert count_predictions(engine) == 24
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
            load_latest_forecast(other, SERIES, model="lstm")[
                "predicted_close"
            ].tolist()
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


def published_rows(engine):
    query = sa.select(predictions.c.model, predictions.c.model_run_id).where(
        predictions.c.published.is_(True)
    )
    with engine.connect() as connection:
        return set(connection.execute(query).all())


class TestBaselinesAndIntervals:
    def test_each_baseline_forecasts_every_step(self, engine, trained):
        candles, _ = trained

        forecast_series(engine, SERIES)

        last_close = candles["close"].iloc[-1]
        naive = load_latest_forecast(engine, SERIES, model="last_close")
        seasonal = load_latest_forecast(engine, SERIES, model="seasonal_naive")
        drift = load_latest_forecast(engine, SERIES, model="drift")
        assert naive["predicted_close"].tolist() == [last_close] * 3
        assert (
            seasonal["predicted_close"].tolist()
            == candles["close"].iloc[-7:-4].tolist()
        )
        assert drift["model_run_id"].isna().all()
        assert len(drift) == 3

    @pytest.mark.parametrize("model", ["lstm", "last_close", "drift"])
    def test_rows_carry_nested_intervals(self, engine, trained, model):
        forecast_series(engine, SERIES)

        rows = load_latest_forecast(engine, SERIES, model=model)

        assert (rows["lower_95"] <= rows["lower_80"]).all()
        assert (rows["lower_80"] < rows["predicted_close"]).all()
        assert (rows["predicted_close"] < rows["upper_80"]).all()
        assert (rows["upper_80"] <= rows["upper_95"]).all()


class TestForecastOfRecord:
    def test_promoted_lstm_is_published(self, engine, trained):
        _, run = trained
        with engine.begin() as connection:
            connection.execute(model_runs.update().values(promoted=True))

        result = forecast_series(engine, SERIES)

        assert published_rows(engine) == {("lstm", run.model_run_id)}
        assert result.published_model == f"lstm (model run {run.model_run_id})"

    def test_last_close_is_published_without_a_promoted_lstm(self, engine, trained):
        with engine.begin() as connection:
            connection.execute(model_runs.update().values(promoted=False))

        result = forecast_series(engine, SERIES)

        assert published_rows(engine) == {("last_close", None)}
        assert result.published_model == "last_close"
        record = load_latest_forecast(engine, SERIES)
        assert record["model"].tolist() == ["last_close"] * 3

    def test_lstm_worse_live_than_last_close_is_demoted(self, engine, trained):
        candles, run = trained
        with engine.begin() as connection:
            connection.execute(model_runs.update().values(promoted=True))
            # Twelve scored step-1 forecasts, each 5 % above the close that came.
            connection.execute(
                predictions.insert(),
                [
                    {
                        "exchange": SERIES.exchange,
                        "symbol": SERIES.symbol,
                        "timeframe": SERIES.timeframe,
                        "model": "lstm",
                        "model_run_id": run.model_run_id,
                        "as_of_open_time": candles["open_time"].iloc[index - 1],
                        "target_open_time": candles["open_time"].iloc[index],
                        "horizon_step": 1,
                        "predicted_close": candles["close"].iloc[index] * 1.05,
                        "published": True,
                        "created_at": candles["open_time"].iloc[index],
                    }
                    for index in range(-13, -1)
                ],
            )

        result = forecast_series(engine, SERIES)

        assert result.demotion is not None
        assert result.demotion.startswith("demoted: live MAE at step 1")
        assert result.published_model == "last_close"
        assert load_published_model_run(engine, SERIES) is None
        with engine.connect() as connection:
            demoted = connection.execute(sa.select(model_runs)).mappings().one()
        assert demoted["demoted_at"] is not None
        assert "vs" in demoted["demotion_reason"]


def test_gap_in_forecast_input_is_named(engine, trained):
    candles, _ = trained
    missing = candles["open_time"].iloc[-3]
    with engine.begin() as connection:
        connection.execute(
            sa.delete(ohlcv).where(ohlcv.c.open_time == missing.to_pydatetime())
        )

    with pytest.raises(
        InsufficientHistoryError, match=f"1 candles missing.*{missing:%Y-%m-%d}"
    ):
        forecast_series(engine, SERIES)
