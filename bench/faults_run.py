"""Backfill three series from loopback exchanges with faults switched on.

Serves generated daily candles from the loopback Binance and Kraken servers of
the tests and ingests each series once into a new SQLite file. Prints how many
HTTP requests each ingest took and how many candles were stored, rejected,
refetched and still missing. The series and their faults:

- binance BTC/USDT, 2500 days: HTTP 429 on every third candle request, pages
  newest first with 10 candles of overlap, 3 days that fail on their first
  request, 2 days the server never has;
- binance ETH/USDT, 2500 days, no faults;
- kraken BTC/USD, 1000 days: malformed JSON on every second request and 1 day
  that fails on its first request. Kraken serves only its 720 newest candles.

Usage:
    python bench/faults_run.py
"""

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

# The loopback servers live in the tests package of this repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_lstm.candles import Series, datetime_to_ms  # noqa: E402
from btc_lstm.ingest import ingest_from_exchange  # noqa: E402
from btc_lstm.migrate import upgrade_database  # noqa: E402
from btc_lstm.store import count_candles  # noqa: E402
from btc_lstm.store.connection import create_db_engine  # noqa: E402
from tests.exchange_server import (  # noqa: E402
    MALFORMED,
    RATE_LIMIT,
    ExchangeState,
    Faults,
    binance_ccxt_config,
    kraken_ccxt_config,
    run_binance_server,
    run_kraken_server,
)
from tests.factories import make_candles  # noqa: E402

HALF_DAY_MS = 43_200_000


def main() -> None:
    btc = make_candles(2500, start="2017-01-01")
    eth = make_candles(2500, start="2017-01-01", seed=3)
    xbt = make_candles(1000, start="2022-01-01", seed=5)
    binance = ExchangeState(
        markets={"BTCUSDT": ("BTC", "USDT", btc), "ETHUSDT": ("ETH", "USDT", eth)}
    )
    kraken = ExchangeState(markets={"XXBTZUSD": ("XXBT", "ZUSD", xbt)})
    # Each server's clock is noon of its last day, so that day's candle is open.
    binance.now_ms = datetime_to_ms(btc["open_time"].iloc[-1]) + HALF_DAY_MS
    kraken.now_ms = datetime_to_ms(xbt["open_time"].iloc[-1]) + HALF_DAY_MS
    btc_times = btc["open_time"]
    binance.faults = Faults(
        every=3,
        kind=RATE_LIMIT,
        newest_first=True,
        overlap_candles=10,
        flaky_open_times={
            btc_times.iloc[300],
            btc_times.iloc[1200],
            btc_times.iloc[2400],
        },
        missing_open_times={btc_times.iloc[1800], btc_times.iloc[1801]},
        only_market_ids={"BTCUSDT"},
    )
    kraken.faults = Faults(
        every=2, kind=MALFORMED, flaky_open_times={xbt["open_time"].iloc[900]}
    )

    print("| series | requests | seconds | stored | rejected | refetched | missing |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as folder:
        engine = create_db_engine(f"sqlite:///{folder}/faults.db")
        upgrade_database(engine)
        with (
            run_binance_server(binance) as binance_url,
            run_kraken_server(kraken) as kraken_url,
        ):
            runs = [
                (
                    Series("binance", "BTC/USDT", "1d"),
                    binance,
                    binance_ccxt_config(binance_url),
                ),
                (
                    Series("binance", "ETH/USDT", "1d"),
                    binance,
                    binance_ccxt_config(binance_url),
                ),
                (
                    Series("kraken", "BTC/USD", "1d"),
                    kraken,
                    kraken_ccxt_config(kraken_url),
                ),
            ]
            for series, state, config in runs:
                requests_before = len(state.requests)
                started = time.perf_counter()
                result = ingest_from_exchange(
                    engine, series, dt.date(2017, 1, 1), config, state.now_ms
                )
                seconds = time.perf_counter() - started
                missing = ", ".join(result.missing_open_times) or "none"
                print(
                    f"| {series} | {len(state.requests) - requests_before} | "
                    f"{seconds:.1f} | {count_candles(engine, series)} | "
                    f"{result.rejected} | {result.refetched} | {missing} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
