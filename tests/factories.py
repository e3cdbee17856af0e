"""Generated candles for tests and benchmarks; importing this loads no Prefect."""

from typing import Any

import numpy as np
import pandas as pd

from btc_lstm.settings import Settings, load_settings


def make_candles(
    count: int,
    start: str = "2022-01-01",
    frequency: str = "D",
    seed: int = 7,
    first_close: float = 100.0,
) -> pd.DataFrame:
    """Return a random walk of valid candles, oldest first."""
    returns = np.random.default_rng(seed).normal(0.0, 0.02, count)
    closes = first_close * np.cumprod(1 + returns)
    opens = np.concatenate([[first_close], closes[:-1]])
    highs = np.maximum(opens, closes) * 1.01
    lows = np.minimum(opens, closes) * 0.99
    return pd.DataFrame(
        {
            "open_time": pd.date_range(start, periods=count, freq=frequency, tz="UTC"),
            "open": opens,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": 1000.0,
        }
    )


def small_settings(**overrides: Any) -> Settings:
    """Return settings of a model small enough to train in a second or two."""
    values = {
        "window_candles": 120,
        "lookback_candles": 10,
        "horizon_candles": 3,
        "epochs": 3,
        "lstm_units": 8,
        "random_seed": 11,
    }
    return load_settings(**{**values, **overrides})
