"""Baselines, conformal intervals, forecast metrics and the gating decisions."""

import numpy as np
import pandas as pd
import pytest

from btc_lstm.baselines import baseline_closes, baseline_forecasts, season_candles
from btc_lstm.gating import demotion_decision, promotion_decision
from btc_lstm.scoring import conformal_halfwidths, score_forecasts

CLOSES = np.array([100.0, 110.0, 121.0, 133.1, 146.41, 161.051, 177.1561, 194.87171])


class TestBaselines:
    def test_last_close_repeats_the_anchor_close(self):
        forecast = baseline_closes("last_close", CLOSES, np.array([3]), 2, 10, 7)

        assert forecast.tolist() == [[133.1, 133.1]]

    def test_drift_extends_window_mean_return(self):
        forecast = baseline_closes("drift", CLOSES, np.array([4]), 2, 3, 7)

        # Closes grow 10 % a candle, so drift keeps growing them 10 %.
        assert forecast[0] == pytest.approx([161.051, 177.1561])

    def test_drift_reads_nothing_after_the_anchor(self):
        changed = CLOSES.copy()
        changed[5:] = 1.0

        assert baseline_closes("drift", changed, np.array([4]), 2, 5, 7) == (
            pytest.approx(baseline_closes("drift", CLOSES, np.array([4]), 2, 5, 7))
        )

    def test_seasonal_naive_repeats_the_close_one_season_back(self):
        forecast = baseline_closes("seasonal_naive", CLOSES, np.array([6]), 4, 10, 3)

        # Steps 1..3 repeat closes 4..6; step 4 is one season after step 1.
        assert forecast.tolist() == [[CLOSES[4], CLOSES[5], CLOSES[6], CLOSES[4]]]

    def test_unknown_baseline(self):
        with pytest.raises(ValueError, match="unknown baseline 'mean'"):
            baseline_closes("mean", CLOSES, np.array([3]), 1, 3, 7)

    def test_week_of_candles(self):
        assert season_candles(86_400_000) == 7
        assert season_candles(14_400_000) == 42

    def test_too_short_history_gives_no_intervals(self):
        forecasts = baseline_forecasts(CLOSES, 3, 5, 7, 100)

        assert all(intervals is None for _, intervals in forecasts.values())


class TestConformal:
    def test_rank_of_the_halfwidth(self):
        errors = np.arange(1, 11, dtype=float)[:, None] / 100

        # ceil(11 * 0.8) = 9th smallest of 10; ceil(11 * 0.95) = 11 > 10, the max.
        assert conformal_halfwidths(errors, 80) == [0.09]
        assert conformal_halfwidths(errors, 95) == [0.10]

    def test_sign_of_the_error_does_not_matter(self):
        errors = np.array([[-0.2, 0.1], [0.1, -0.3], [0.05, 0.05]])

        assert conformal_halfwidths(errors, 80) == [0.2, 0.3]


class TestScoreForecasts:
    def test_metrics_of_a_small_frame(self):
        forecasts = pd.DataFrame(
            {
                "model": ["a", "a", "last_close", "last_close"],
                "horizon_step": [1, 1, 1, 1],
                "as_of_close": [100.0, 100.0, 100.0, 100.0],
                "predicted_close": [110.0, 95.0, 100.0, 100.0],
                "actual_close": [105.0, 90.0, 105.0, 90.0],
                "naive_scale": [5.0, 5.0, 5.0, 5.0],
                "lower_80": [100.0, 96.0, 99.0, 99.0],
                "upper_80": [120.0, 99.0, 101.0, 101.0],
            }
        )

        metrics = score_forecasts(forecasts, reference="last_close").set_index("model")

        assert metrics.loc["a", "mae"] == 5.0
        assert metrics.loc["a", "rmse"] == 5.0
        assert metrics.loc["a", "mase"] == 1.0
        assert metrics.loc["a", "directional_accuracy"] == 1.0
        assert metrics.loc["a", "coverage_80"] == 0.5
        assert metrics.loc["a", "mae_ratio_to_last_close"] == pytest.approx(5 / 7.5)
        assert metrics.loc["a", "mape"] == pytest.approx(100 * (5 / 105 + 5 / 90) / 2)
        assert pd.isna(metrics.loc["last_close", "directional_accuracy"])
        assert pd.isna(metrics.loc["last_close", "coverage_95"])


class TestGating:
    def test_candidate_no_worse_than_every_reference_is_promoted(self):
        decision = promotion_decision(
            [10.0, 20.0], {"last close": [10.0, 21.0], "model run 3": [11.0, 20.0]}
        )

        assert decision.passed
        assert decision.reason.startswith("promoted: at or below every reference")

    def test_candidate_worse_at_step_1_is_not_promoted(self):
        decision = promotion_decision([10.5, 10.0], {"last close": [10.0, 30.0]})

        assert not decision.passed
        assert decision.reason.startswith("not promoted: worse than last close (")

    def test_candidate_worse_on_average_is_not_promoted(self):
        decision = promotion_decision([9.0, 40.0], {"last close": [10.0, 30.0]})

        assert not decision.passed

    def live(self, model_errors, last_close_errors):
        return pd.DataFrame(
            {
                "target_open_time": pd.date_range(
                    "2025-01-01", periods=len(model_errors), tz="UTC"
                ),
                "absolute_error": model_errors,
                "last_close_absolute_error": last_close_errors,
            }
        )

    def test_worse_live_error_demotes(self):
        decision = demotion_decision(self.live([2.0] * 12, [1.0] * 12), 30)

        assert decision.passed
        assert "over the newest 12 scored forecasts is 2 vs 1" in decision.reason

    def test_only_the_newest_forecasts_count(self):
        # Bad long ago, good in the newest five.
        live = self.live([9.0] * 20 + [0.5] * 10, [1.0] * 30)

        assert not demotion_decision(live, 10).passed
        assert demotion_decision(live, 30).passed

    def test_too_few_scored_forecasts_never_demote(self):
        decision = demotion_decision(self.live([5.0] * 9, [1.0] * 9), 30)

        assert not decision.passed
        assert "only 9 scored forecasts" in decision.reason

    def test_margin_asks_for_a_clear_improvement(self):
        references = {"last close": [10.0, 20.0]}

        assert promotion_decision([9.95, 19.0], references).passed
        decision = promotion_decision([9.95, 19.0], references, margin=0.01)
        assert not decision.passed
        assert "references less 1%: last close 9.9 at step 1" in decision.reason
