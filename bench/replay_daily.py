"""Replay the daily job over the last days of a candle file, as if run each day.

Stores the file's candles up to N days before its end, then for each of the last
N days stores that day's candle, retrains and forecasts, the way the scheduled
job would have. The database comes from BTC_LSTM_DATABASE_URL and the model
settings from the other BTC_LSTM_* variables. Used to fill the tables behind the
README's SQL examples.

Usage:
    python bench/replay_daily.py ../shared/data/binance_daily/Binance_BTCUSDT_d.csv \
        --days 30
"""

import argparse
import logging
from pathlib import Path

from btc_lstm.csv_import import read_candle_csv
from btc_lstm.forecast import forecast_series
from btc_lstm.migrate import upgrade_database
from btc_lstm.settings import load_settings
from btc_lstm.store import upsert_candles
from btc_lstm.store.connection import create_db_engine
from btc_lstm.train import train_series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--days", type=int, default=30)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    settings = load_settings()
    engine = create_db_engine(settings.database_url)
    upgrade_database(engine)
    candle_file = read_candle_csv(arguments.path)
    series, candles = candle_file.series, candle_file.candles
    first_replayed = len(candles) - arguments.days
    upsert_candles(engine, series, candles.iloc[:first_replayed])
    for day in range(first_replayed, len(candles)):
        upsert_candles(engine, series, candles.iloc[[day]])
        train_series(engine, settings, series)
        forecast_series(engine, series, settings.live_error_candles)


if __name__ == "__main__":
    main()
