"""Measure a full backfill of the four shared daily files, by source and database.

Each case stores the BTC, ETH, LTC and XRP /USDT daily candles of the shared
CryptoDataDownload files into a new, empty database, in one of two ways:

- exchange: the files' candles are served by the loopback Binance server of the
  tests (`tests/exchange_server.py`), and `ingest_from_exchange` backfills each
  pair through ccxt's real Binance client, paging as it does against Binance.
- import-csv: `import_candle_file` reads and stores each file, as
  `btc-lstm import-csv` does.

Each case runs on SQLite (a file in a temporary folder) and on Postgres (a
database that the script creates on the server of --postgres-url and drops
afterwards). Every repeat of a case runs in a fresh Python subprocess, so its peak
resident memory (`ru_maxrss`) is that case's alone. The time covers only the
ingest calls: reading the files for the exchange server, creating the tables and
starting the interpreter are not timed. Prints Markdown tables.

Usage:
    python bench/bench_ingest.py
    python bench/bench_ingest.py --postgres-url postgresql://postgres@127.0.0.1:5432/test
    python bench/bench_ingest.py --repeats 1 --no-postgres
"""

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from btc_lstm.candles import Series, datetime_to_ms  # noqa: E402
from btc_lstm.csv_import import read_candle_csv  # noqa: E402
from btc_lstm.ingest import (  # noqa: E402
    IngestResult,
    import_candle_file,
    ingest_from_exchange,
)
from btc_lstm.migrate import upgrade_database  # noqa: E402
from btc_lstm.store.connection import create_db_engine  # noqa: E402
from tests.exchange_server import (  # noqa: E402
    BinanceState,
    binance_ccxt_config,
    run_binance_server,
)

SHARED_CANDLES = REPOSITORY.parent / "shared/data/binance_daily"
MARKETS = ["BTCUSDT", "ETHUSDT", "LTCUSDT", "XRPUSDT"]
SOURCES = ["exchange", "import-csv"]
# Before the first candle of every shared file, so each backfill is complete.
HISTORY_START = dt.date(2017, 8, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="Postgres server on which each case creates and drops its database",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case")
    parser.add_argument("--child-source", choices=SOURCES, help=argparse.SUPPRESS)
    parser.add_argument("--child-database-url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child_source:
        run_case(arguments.child_source, arguments.child_database_url)
        return

    databases = ["sqlite"] if arguments.no_postgres else ["sqlite", "postgresql"]
    results = {
        (source, database): [
            run_in_subprocess(source, database, arguments.postgres_url)
            for _ in range(arguments.repeats)
        ]
        for source in SOURCES
        for database in databases
    }
    print_tables(results, arguments.repeats)


def run_in_subprocess(source: str, database: str, postgres_url: str) -> dict[str, Any]:
    """Run one case in a new interpreter on a new database; return its measurements."""
    with tempfile.TemporaryDirectory(prefix="btc-lstm-bench-") as folder:
        if database == "sqlite":
            return run_child(source, f"sqlite:///{Path(folder) / 'bench.db'}")
        with postgres_database(postgres_url) as database_url:
            return run_child(source, database_url)


def run_child(source: str, database_url: str) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-source",
            source,
            "--child-database-url",
            database_url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{source} on {database_url} failed:\n{completed.stderr}")
    return dict(json.loads(completed.stdout.splitlines()[-1]))


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server of `server_url`; drop it on exit."""
    server = sa.make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"btc_lstm_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def run_case(source: str, database_url: str) -> None:
    """Backfill the four pairs into an empty database; print one JSON line."""
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    paths = [SHARED_CANDLES / f"Binance_{market}_d.csv" for market in MARKETS]
    requests = 0

    if source == "import-csv":
        rss_before_kib = peak_rss_kib()
        started = time.perf_counter()
        results = [import_candle_file(engine, path) for path in paths]
        seconds = time.perf_counter() - started
    else:
        files = [read_candle_csv(path) for path in paths]
        state = BinanceState()
        for market, candle_file in zip(MARKETS, files, strict=True):
            base, quote = candle_file.series.symbol.split("/")
            state.markets[market] = (base, quote, candle_file.candles)
        newest_open = max(file.candles["open_time"].iloc[-1] for file in files)
        # Five minutes after the newest candle closed: every candle is closed.
        state.now_ms = datetime_to_ms(newest_open) + 86_400_000 + 300_000
        with run_binance_server(state) as api_url:
            config = binance_ccxt_config(api_url)
            rss_before_kib = peak_rss_kib()
            started = time.perf_counter()
            results = [
                ingest_from_exchange(
                    engine,
                    Series("binance", file.series.symbol, "1d"),
                    HISTORY_START,
                    config,
                    state.now_ms,
                )
                for file in files
            ]
            seconds = time.perf_counter() - started
        requests = len(state.requests)

    engine.dispose()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": sum(result.received for result in results),
                "files": [counts(result) for result in results],
                "peak_rss_mib": peak_rss_kib() / 1024,
                "rss_before_mib": rss_before_kib / 1024,
                "requests": requests,
            }
        )
    )


def counts(result: IngestResult) -> dict[str, Any]:
    return {
        "symbol": result.symbol,
        "read": result.received,
        "stored": result.inserted,
        "updated": result.updated,
        "rejected": result.rejected,
    }


def peak_rss_kib() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def print_tables(
    results: dict[tuple[str, str], list[dict[str, Any]]], repeats: int
) -> None:
    print(f"median of {repeats} runs per case, each in a new process and database")
    print()
    print(
        "| source | database | rows | HTTP requests | median s | rows per second | "
        "peak RSS MiB | RSS before ingest MiB |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (source, database), runs in results.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        rows = runs[0]["rows"]
        print(
            f"| {source} | {database} | {rows:,} | {runs[0]['requests']} | "
            f"{seconds:.2f} | "
            f"{rows / seconds:,.0f} | {max(run['peak_rss_mib'] for run in runs):.0f} | "
            f"{max(run['rss_before_mib'] for run in runs):.0f} |"
        )
    print()
    print("| source | database | symbol | read | stored | updated | rejected |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for (source, database), runs in results.items():
        for row in runs[0]["files"]:
            print(
                f"| {source} | {database} | {row['symbol']} | {row['read']:,} | "
                f"{row['stored']:,} | {row['updated']} | {row['rejected']} |"
            )


if __name__ == "__main__":
    main()
