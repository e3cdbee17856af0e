"""Baseline forecasts that the LSTM has to beat, computed from closes alone.

- last_close: every future close equals the as-of close (a random walk).
- drift: the as-of close grown by the window's mean log return per candle.
- seasonal_naive: each future close equals the close one week earlier.
"""

import numpy as np

from btc_lstm.scoring import INTERVAL_LEVELS, conformal_halfwidths

LAST_CLOSE = "last_close"
DRIFT = "drift"
SEASONAL_NAIVE = "seasonal_naive"
BASELINES = (LAST_CLOSE, DRIFT, SEASONAL_NAIVE)

WEEK_MS = 7 * 86_400_000


def season_candles(timeframe_ms: int) -> int:
    """Return how many candles make one week, the season of `seasonal_naive`."""
    return max(1, WEEK_MS // timeframe_ms)


def baseline_closes(
    model: str,
    closes: np.ndarray,
    anchors: np.ndarray,
    horizon: int,
    window_candles: int,
    season: int,
) -> np.ndarray:
    """Return a baseline's forecasts from each anchor candle.

    Args:
        model: one of `BASELINES`.
        closes: closes of contiguous candles, oldest first, shape `(candles,)`.
        anchors: indices into `closes` of the as-of candles, shape `(forecasts,)`.
            Each needs `season` earlier closes for the seasonal naive baseline.
        horizon: steps ahead to forecast.
        window_candles: candles up to the anchor whose mean log return is the
            drift; fewer are used near the start of `closes`.
        season: candles per season of the seasonal naive baseline.

    Returns:
        Forecast closes of shape `(forecasts, horizon)`. Only closes at or before
        each anchor are read.
    """
    anchors = np.asarray(anchors, dtype=int)
    steps = np.arange(1, horizon + 1)
    last = closes[anchors][:, None]
    if model == LAST_CLOSE:
        return np.repeat(last, horizon, axis=1)
    if model == DRIFT:
        first = np.maximum(anchors - window_candles + 1, 0)
        span = np.maximum(anchors - first, 1)
        mean_log_return = np.log(closes[anchors] / closes[first]) / span
        drift: np.ndarray = last * np.exp(mean_log_return[:, None] * steps[None, :])
        return drift
    if model == SEASONAL_NAIVE:
        seasons_back = -(-steps // season)  # ceil(step / season)
        offsets = steps - season * seasons_back
        seasonal: np.ndarray = closes[anchors[:, None] + offsets[None, :]]
        return seasonal
    raise ValueError(f"unknown baseline {model!r}; expected one of {BASELINES}")


# Fewer past forecasts than this cannot calibrate an interval.
MINIMUM_CALIBRATION_FORECASTS = 2


def baseline_forecasts(
    closes: np.ndarray,
    horizon: int,
    window_candles: int,
    season: int,
    calibration_forecasts: int,
) -> dict[str, tuple[np.ndarray, dict[str, list[float]] | None]]:
    """Return each baseline's forecast from the last close, with its intervals.

    Args:
        closes: closes of contiguous candles up to the as-of candle, oldest first.
        calibration_forecasts: how many of the newest past forecasts whose
            targets are known calibrate the intervals.

    Returns:
        For each name in `BASELINES`, the forecast closes of steps 1..horizon and
        the log half-widths of its intervals by level, or None when `closes` is
        too short to calibrate them.
    """
    as_of = len(closes) - 1
    last_scored_anchor = as_of - horizon
    first_anchor = max(season, last_scored_anchor - calibration_forecasts + 1)
    anchors = np.arange(first_anchor, last_scored_anchor + 1)
    steps = np.arange(1, horizon + 1)
    forecasts = {}
    for model in BASELINES:
        forecast = baseline_closes(
            model, closes, np.array([as_of]), horizon, window_candles, season
        )[0]
        intervals = None
        if len(anchors) >= MINIMUM_CALIBRATION_FORECASTS:
            past = baseline_closes(
                model, closes, anchors, horizon, window_candles, season
            )
            log_errors = np.log(closes[anchors[:, None] + steps[None, :]] / past)
            intervals = {
                str(level): conformal_halfwidths(log_errors, level)
                for level in INTERVAL_LEVELS
            }
        forecasts[model] = (forecast, intervals)
    return forecasts
