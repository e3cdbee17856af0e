import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series
from btc_lstm.errors import InsufficientHistoryError, TrainingError
from btc_lstm.features import Standardizer, build_windows, candle_features
from btc_lstm.store import upsert_candles
from btc_lstm.store.schema import model_runs
from btc_lstm.train import (
    fit_model,
    require_finite_training,
    split_sample_count,
    train_series,
)
from tests.conftest import make_candles
from tests.factories import small_settings

SERIES = Series("binance", "BTC/USDT", "1d")


class TestWindows:
    def test_shapes(self):
        windows = build_windows(make_candles(50), lookback=10, horizon=3)

        assert windows.inputs.shape == (37, 10, 2)
        assert windows.targets.shape == (37, 3)
        assert windows.anchor_closes.shape == (37,)

    def test_targets_are_log_returns_from_anchor(self):
        candles = make_candles(50)
        closes = candles["close"].to_numpy()

        windows = build_windows(candles, lookback=10, horizon=3)

        # Sample 0 reads candles 1..10, so its anchor is candle 10.
        assert windows.anchor_closes[0] == pytest.approx(closes[10])
        assert windows.targets[0, 0] == pytest.approx(np.log(closes[11] / closes[10]))
        assert windows.targets[0, 2] == pytest.approx(np.log(closes[13] / closes[10]))

    def test_inputs_end_at_anchor(self):
        candles = make_candles(50)
        features = candle_features(candles)

        windows = build_windows(candles, lookback=10, horizon=3)

        assert windows.inputs[0, -1, 0] == pytest.approx(features[9, 0])
        assert windows.inputs[-1, -1, 0] == pytest.approx(features[-4, 0])

    def test_split_leaves_horizon_gap(self):
        training_count, validation_start = split_sample_count(100, 0.2, horizon=7)

        assert validation_start == 80
        assert training_count == 73

    def test_split_too_small_raises(self):
        with pytest.raises(InsufficientHistoryError, match="use a longer window"):
            split_sample_count(15, 0.2, horizon=7)

    def test_constant_column_scales_without_division_by_zero(self):
        scaler = Standardizer.fit(np.ones((5, 2)))

        assert np.isfinite(scaler.transform(np.ones((1, 2)))).all()


class TestFitModel:
    @pytest.mark.slow
    def test_scaler_is_fit_on_training_samples_only(self):
        candles = make_candles(120)
        settings = small_settings()
        # A price jump after the training samples must not move the scaler.
        candles.loc[110:, ["open", "high", "low", "close"]] *= 3.0

        fitted = fit_model(candles, settings)

        windows = build_windows(candles, 10, 3)
        training_count, _ = split_sample_count(len(windows.targets), 0.2, 3)
        training_rows = windows.inputs[:training_count].reshape(-1, 2)
        scaler = fitted.preprocessing["input_scaler"]
        assert scaler["mean"] == pytest.approx(training_rows.mean(axis=0).tolist())
        assert scaler["std"] == pytest.approx(training_rows.std(axis=0).tolist())

    @pytest.mark.slow
    def test_metrics_compare_with_last_close(self):
        fitted = fit_model(make_candles(120), small_settings())

        metrics = fitted.metrics
        assert len(metrics["mae_by_step"]) == 3
        assert len(metrics["last_close_mae_by_step"]) == 3
        assert metrics["mae_ratio_to_last_close_step_1"] == pytest.approx(
            metrics["mae_by_step"][0] / metrics["last_close_mae_by_step"][0]
        )
        assert 1 <= fitted.epochs_trained <= 3


class TestTrainSeries:
    def test_too_little_history_says_how_much(self, engine):
        upsert_candles(engine, SERIES, make_candles(60))

        with pytest.raises(InsufficientHistoryError) as error:
            train_series(engine, small_settings(), SERIES)

        assert (
            "need 120 closed 1d candles of binance BTC/USDT to train, found 60"
            in str(error.value)
        )

    def test_gap_in_window_is_reported(self, engine):
        candles = make_candles(130).drop(index=[100, 101]).reset_index(drop=True)
        upsert_candles(engine, SERIES, candles)

        with pytest.raises(
            InsufficientHistoryError, match="2 candles missing"
        ) as error:
            train_series(engine, small_settings(), SERIES)

        assert "first 2022-04-11 00:00 UTC" in str(error.value)

    @pytest.mark.slow
    def test_stores_model_run_with_window(self, engine):
        candles = make_candles(150)
        upsert_candles(engine, SERIES, candles)

        result = train_series(engine, small_settings(), SERIES)

        with engine.connect() as connection:
            run = connection.execute(sa.select(model_runs)).mappings().one()
        assert result.trained
        assert run["id"] == result.model_run_id
        assert run["candle_count"] == 120
        assert run["window_start_open_time"] == candles["open_time"].iloc[30]
        assert run["window_end_open_time"] == candles["open_time"].iloc[-1]
        assert run["hyperparameters"]["lookback_candles"] == 10
        assert len(run["model_archive"]) > 1000

    @pytest.mark.slow
    def test_same_window_is_not_trained_twice(self, engine):
        upsert_candles(engine, SERIES, make_candles(150))
        first = train_series(engine, small_settings(), SERIES)

        second = train_series(engine, small_settings(), SERIES)

        assert not second.trained
        assert second.model_run_id == first.model_run_id

    @pytest.mark.slow
    def test_new_hyperparameters_train_again(self, engine):
        upsert_candles(engine, SERIES, make_candles(150))
        first = train_series(engine, small_settings(), SERIES)

        second = train_series(engine, small_settings(epochs=2), SERIES)

        assert second.trained
        assert second.model_run_id != first.model_run_id


class TestGating:
    @pytest.mark.slow
    def test_run_records_the_gate_against_last_close(self, engine):
        upsert_candles(engine, SERIES, make_candles(150))

        result = train_series(engine, small_settings(promotion_margin=0.0), SERIES)

        with engine.connect() as connection:
            run = connection.execute(sa.select(model_runs)).mappings().one()
        assert run["promoted"] == result.promoted
        assert run["promotion_reason"] == result.promotion_reason
        assert "last close" in run["promotion_reason"]
        ratio = result.metrics["mae_ratio_to_last_close_step_1"]
        mean_ratio = result.metrics["mae_ratio_to_last_close_all_steps"]
        beats_last_close = ratio <= 1 and mean_ratio <= 1
        assert result.promoted == beats_last_close

    @pytest.mark.slow
    def test_unreachable_margin_keeps_last_close(self, engine):
        upsert_candles(engine, SERIES, make_candles(150))

        result = train_series(engine, small_settings(promotion_margin=0.9), SERIES)

        assert result.promoted is False
        assert result.promotion_reason.startswith("not promoted: worse than last")

    @pytest.mark.slow
    def test_retrain_is_compared_with_the_published_run(self, engine):
        candles = make_candles(151)
        upsert_candles(engine, SERIES, candles.iloc[:150])
        first = train_series(engine, small_settings(), SERIES)
        with engine.begin() as connection:
            connection.execute(model_runs.update().values(promoted=True))
        upsert_candles(engine, SERIES, candles.iloc[150:])

        second = train_series(engine, small_settings(), SERIES)

        assert f"published model run {first.model_run_id}" in second.promotion_reason


def test_window_candles_are_the_newest(engine):
    candles = make_candles(200)
    upsert_candles(engine, SERIES, candles)

    from btc_lstm.train import load_training_window

    window = load_training_window(engine, SERIES, 120)

    assert window["open_time"].iloc[-1] == candles["open_time"].iloc[-1]
    assert window["open_time"].iloc[0] == pd.Timestamp(candles["open_time"].iloc[80])


class TestDivergence:
    @pytest.mark.parametrize(
        ("predicted", "loss"),
        [([[0.01, np.inf]], 0.5), ([[0.01, np.nan]], 0.5), ([[0.01, 0.02]], np.inf)],
    )
    def test_non_finite_training_raises(self, predicted, loss):
        with pytest.raises(TrainingError, match="training diverged"):
            require_finite_training(np.array(predicted), loss, learning_rate=1.0)

    def test_finite_training_passes(self):
        require_finite_training(np.array([[0.01, 0.02]]), 0.5, learning_rate=1.0)
