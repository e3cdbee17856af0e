"""Model inputs and targets built from candles, and the scaling fitted on training data.

Prices are not stationary, so the model reads and predicts log returns: the input
at candle t is (log(close_t / close_t-1), log(high_t / low_t)) and the target of a
forecast from candle t is log(close_t+h / close_t) for h = 1..horizon.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from btc_lstm.candles import Series
from btc_lstm.errors import InsufficientHistoryError

FEATURE_NAMES = ["log_return", "log_high_low_range"]


def candle_features(candles: pd.DataFrame) -> np.ndarray:
    """Return the features of every candle but the first.

    Returns:
        Array of shape `(len(candles) - 1, len(FEATURE_NAMES))`.
    """
    closes = candles["close"].to_numpy(dtype="float64")
    highs = candles["high"].to_numpy(dtype="float64")
    lows = candles["low"].to_numpy(dtype="float64")
    log_returns = np.diff(np.log(closes))
    log_ranges = np.log(highs[1:] / lows[1:])
    return np.column_stack([log_returns, log_ranges])


@dataclass(frozen=True)
class Windows:
    """Supervised samples cut from a run of contiguous candles.

    Attributes:
        inputs: features of the `lookback` candles up to each anchor candle, shape
            `(samples, lookback, features)`.
        targets: log return from the anchor's close to each of the next `horizon`
            closes, shape `(samples, horizon)`.
        anchor_closes: close of each sample's last input candle, shape `(samples,)`.
    """

    inputs: np.ndarray
    targets: np.ndarray
    anchor_closes: np.ndarray

    def sliced(self, start: int, stop: int | None = None) -> "Windows":
        """Return samples `start` to `stop` (exclusive, default: the last)."""
        return Windows(
            self.inputs[start:stop],
            self.targets[start:stop],
            self.anchor_closes[start:stop],
        )


def build_windows(candles: pd.DataFrame, lookback: int, horizon: int) -> Windows:
    """Cut every (lookback inputs, horizon targets) sample from contiguous candles."""
    features = candle_features(candles)
    log_closes = np.log(candles["close"].to_numpy(dtype="float64"))
    sample_count = len(candles) - lookback - horizon
    if sample_count <= 0:
        raise ValueError(
            f"need more than {lookback + horizon} candles to build samples, "
            f"got {len(candles)}"
        )
    # Sample k reads feature rows k..k+lookback-1, which belong to candles
    # k+1..k+lookback, so its anchor (last input candle) is candle k+lookback.
    anchors = np.arange(sample_count) + lookback
    inputs = np.stack([features[k : k + lookback] for k in range(sample_count)])
    steps = np.arange(1, horizon + 1)
    targets = log_closes[anchors[:, None] + steps] - log_closes[anchors][:, None]
    anchor_closes = np.exp(log_closes[anchors])
    return Windows(inputs=inputs, targets=targets, anchor_closes=anchor_closes)


@dataclass(frozen=True)
class Standardizer:
    """Mean and standard deviation per column, fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> "Standardizer":
        std = rows.std(axis=0)
        # A constant column (a flat synthetic price, say) must not divide by zero.
        std = np.where(std > 0, std, 1.0)
        return cls(mean=rows.mean(axis=0), std=std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.asarray((values - self.mean) / self.std)

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values * self.std + self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Standardizer":
        return cls(mean=np.asarray(values["mean"]), std=np.asarray(values["std"]))


def require_contiguous(candles: pd.DataFrame, series: Series, purpose: str) -> None:
    """Check that candles follow each other with no missing open time.

    Missing candles are never filled in, because an interpolated close would
    teach the model a move that did not happen.

    Raises:
        InsufficientHistoryError: candles are missing; the message counts them
            and lists the first ten missing open times.
    """
    # Positions, not the caller's row labels, which may come from a slice.
    open_times = candles["open_time"].reset_index(drop=True)
    steps = open_times.diff().dropna()
    expected = pd.Timedelta(series.timeframe_ms, "ms")
    gaps = steps[steps != expected]
    if gaps.empty:
        return
    missing_times = [
        open_times.iloc[position - 1] + expected * step
        for position in gaps.index
        for step in range(1, int(steps[position] // expected))
    ]
    if not missing_times:
        first = open_times.iloc[gaps.index[0]]
        raise InsufficientHistoryError(
            f"{series}: candles inside the {purpose} window are not one "
            f"{series.timeframe} apart, first at {first:%Y-%m-%d %H:%M} UTC; the "
            "series mixes candles that open at different times of day"
        )
    listed = ", ".join(f"{moment:%Y-%m-%d %H:%M}" for moment in missing_times[:10])
    more = len(missing_times) - 10
    if more > 0:
        listed += f" and {more} more"
    raise InsufficientHistoryError(
        f"{series}: {len(missing_times)} candles missing inside the {purpose} "
        f"window, first {missing_times[0]:%Y-%m-%d %H:%M} UTC, missing open times "
        f"{listed} UTC; run the ingest again to refetch them from the exchange, "
        "import a file that covers them with `btc-lstm import-csv`, or wait until "
        "the window has moved past the gap"
    )
