"""Choose the promotion margin on a year before the one the README reports.

Backtests the shared BTC/USDT file over the 365 as-of days that end one year
before the newest scored day, once per margin, and prints each run's step-1 and
step-7 MAE ratio of the published forecast to last close. The LSTM fits do not
depend on the margin, so each window is fitted once and reused by every margin.

Usage:
    python bench/tune_gating.py [--margins 0 0.01 0.02 0.05]
"""

import argparse
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

import btc_lstm.backtest
from btc_lstm.backtest import backtest_series
from btc_lstm.ingest import import_candle_file
from btc_lstm.migrate import upgrade_database
from btc_lstm.settings import load_settings
from btc_lstm.store import load_latest_backtest
from btc_lstm.store.connection import create_db_engine
from btc_lstm.train import FittedModel, fit_model

SHARED_FILE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/binance_daily/Binance_BTCUSDT_d.csv"
)
# The README reports the 365 as-of days up to 2025-03-09; tuning ends a year earlier.
TUNING_LAST_AS_OF = dt.date(2024, 3, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--margins", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05]
    )
    arguments = parser.parse_args()

    fits: dict[Any, FittedModel] = {}

    def fit_once(candles: pd.DataFrame, settings: Any) -> FittedModel:
        window_end = candles["open_time"].iloc[-1]
        if window_end not in fits:
            fits[window_end] = fit_model(candles, settings)
        return fits[window_end]

    # The walk forward looks fit_model up in its own module, so the cache goes there.
    setattr(btc_lstm.backtest, "fit_model", fit_once)  # noqa: B010

    with tempfile.TemporaryDirectory() as folder:
        engine = create_db_engine(f"sqlite:///{folder}/tune.db")
        upgrade_database(engine)
        series = import_candle_file(engine, SHARED_FILE)
        print(
            "| margin | promotions | demotions | published/last close, step 1 | "
            "step 7 |"
        )
        print("| ---: | ---: | ---: | ---: | ---: |")
        for margin in arguments.margins:
            settings = load_settings(promotion_margin=margin)
            result = backtest_series(
                engine,
                settings,
                _series(series),
                as_of_candles=365,
                last_as_of=TUNING_LAST_AS_OF,
            )
            _, metrics, _ = load_latest_backtest(engine, _series(series))  # type: ignore[misc]
            published = metrics[metrics["model"] == "published"].set_index(
                "horizon_step"
            )["mae_ratio_to_last_close"]
            print(
                f"| {margin:.2f} | {result.promotions} | {result.demotions} | "
                f"{published[1]:.4f} | {published[7]:.4f} |",
                flush=True,
            )


def _series(result: Any) -> Any:
    from btc_lstm.candles import Series

    return Series(result.exchange, result.symbol, result.timeframe)


if __name__ == "__main__":
    main()
