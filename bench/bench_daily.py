"""Time one daily run for N symbols, with or without a running Prefect server.

A loopback server imitating Binance serves two years of daily candles per symbol,
ending with today's open candle, so the run ingests, trains and forecasts every
symbol from scratch on a new SQLite file. Prints a Markdown table: wall time,
the time of the ingest, train and forecast subflows, the rest as orchestration
overhead, and the peak resident memory of the process.

Usage:
    python bench/bench_daily.py --symbols 1
    python bench/bench_daily.py --symbols 10 --server

With --server, a `prefect server start` subprocess is started first on a free
loopback port with its own PREFECT_HOME; without it, the flow run starts
Prefect's temporary server itself, as `btc-lstm run` does.
"""

import argparse
import datetime as dt
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from btc_lstm.candles import datetime_to_ms  # noqa: E402
from tests.exchange_server import (  # noqa: E402
    BinanceState,
    binance_ccxt_config,
    run_binance_server,
)
from tests.factories import make_candles  # noqa: E402

HISTORY_DAYS = 800


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1)
    parser.add_argument("--server", action="store_true")
    arguments = parser.parse_args()

    workspace = Path(tempfile.mkdtemp(prefix="btc-lstm-bench-"))
    os.environ["PREFECT_HOME"] = str(workspace / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    server = start_prefect_server(workspace) if arguments.server else None
    try:
        row = measure(arguments.symbols, workspace)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)

    mode = "running server" if arguments.server else "temporary server"
    print("| symbols | Prefect | wall s | ingest s | train s | forecast s |", end="")
    print(" orchestration s | peak MiB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {arguments.symbols} | {mode} | {row['wall']:.1f} | {row['ingest']:.1f} "
        f"| {row['train']:.1f} | {row['forecast']:.1f} | {row['orchestration']:.1f} "
        f"| {row['peak_mib']:.0f} |"
    )


def start_prefect_server(workspace: Path) -> subprocess.Popen[bytes]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--port", str(port)],
        stdout=(workspace / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        raise RuntimeError(f"Prefect server on port {port} did not start in 120 s")
    os.environ["PREFECT_API_URL"] = api_url
    return server


def measure(symbol_count: int, workspace: Path) -> dict[str, float]:
    today = pd.Timestamp.now(tz="UTC").normalize()
    start = today - pd.Timedelta(days=HISTORY_DAYS - 1)
    markets = {
        f"SYM{index}USDT": (
            f"SYM{index}",
            "USDT",
            make_candles(HISTORY_DAYS, start=start.isoformat(), seed=index),
        )
        for index in range(symbol_count)
    }
    state = BinanceState(markets=markets)
    state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    symbols = [f"SYM{index}/USDT" for index in range(symbol_count)]

    with run_binance_server(state) as api_url:
        os.environ["BTC_LSTM_DATABASE_URL"] = f"sqlite:///{workspace / 'bench.db'}"
        os.environ["BTC_LSTM_CCXT_CONFIG"] = json.dumps(binance_ccxt_config(api_url))
        os.environ["BTC_LSTM_HISTORY_START"] = start.date().isoformat()
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

        from flows.pipeline import daily

        started = time.perf_counter()
        final_state = daily(symbols=symbols, return_state=True)
        wall = time.perf_counter() - started
        final_state.result()
        stages = stage_seconds(final_state.state_details.flow_run_id)

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall": wall,
        **stages,
        "orchestration": wall - sum(stages.values()),
        "peak_mib": peak_mib,
    }


def stage_seconds(parent_run_id: object) -> dict[str, float]:
    """Return the run time of the ingest, train and forecast subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    subflows = FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_run_id])
    )
    totals = {"ingest": 0.0, "train": 0.0, "forecast": 0.0}
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=subflows):
            flow_name = client.read_flow(run.flow_id).name
            totals[flow_name] += run.total_run_time.total_seconds()
    return totals


if __name__ == "__main__":
    main()
