"""Time one retrain, one forecast and a 365-day backtest on the shared BTC file.

Each measurement runs in a new Python process on a new SQLite file, so its peak
resident memory (ru_maxrss) is its own, imports included. Prints a Markdown table.

Usage:
    python bench/bench_backtest.py [--as-of-candles 365]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED_FILE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/binance_daily/Binance_BTCUSDT_d.csv"
)

# Runs in a child process: stores the file, then times the one step named in argv.
CHILD = """
import json, resource, sys, time
from pathlib import Path
from btc_lstm.backtest import backtest_series
from btc_lstm.candles import Series
from btc_lstm.forecast import forecast_series
from btc_lstm.ingest import import_candle_file
from btc_lstm.migrate import upgrade_database
from btc_lstm.settings import load_settings
from btc_lstm.store.connection import create_db_engine
from btc_lstm.train import train_series

step, database, csv, as_of_candles = sys.argv[1:5]
engine = create_db_engine(f"sqlite:///{database}")
upgrade_database(engine)
import_candle_file(engine, Path(csv))
series = Series("binance", "BTC/USDT", "1d")
settings = load_settings()
if step == "forecast":
    train_series(engine, settings, series)
import btc_lstm.model  # TensorFlow's import is not part of any step's time
started = time.perf_counter()
if step == "retrain":
    train_series(engine, settings, series)
elif step == "forecast":
    forecast_series(engine, series)
else:
    backtest_series(engine, settings, series, as_of_candles=int(as_of_candles))
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of-candles", type=int, default=365)
    arguments = parser.parse_args()
    labels = {
        "retrain": "one retrain on 730 candles (train_series)",
        "forecast": "one forecast, LSTM and baselines (forecast_series)",
        "backtest": f"backtest over {arguments.as_of_candles} as-of days, "
        "retrained every 7",
    }
    print("| step | seconds | peak memory |")
    print("| --- | ---: | ---: |")
    for step, label in labels.items():
        with tempfile.TemporaryDirectory() as folder:
            completed = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    step,
                    f"{folder}/bench.db",
                    str(SHARED_FILE),
                    str(arguments.as_of_candles),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        measured = json.loads(completed.stdout.strip().splitlines()[-1])
        print(
            f"| {label} | {measured['seconds']:.1f} | {measured['peak_mib']:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
