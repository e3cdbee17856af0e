"""Run the team setup on loopback: a Prefect server on Postgres, two workers.

Steps, as the README describes them for a team:
1. A Prefect server whose own database is Postgres (a new database on the
   server at --postgres-url).
2. A `process` work pool named btc-lstm and the `daily/daily` deployment from
   prefect.yaml.
3. Two workers on that pool, each running one flow run at a time, with the
   forecasts in another new Postgres database.
4. One daily run for several symbols with `fan_out_deployment="daily/daily"`:
   it starts one deployment run per symbol, and the workers share them.

Candles come from a loopback server imitating Binance. The script prints which
worker ran which symbol, then stops everything and drops its databases.

Usage:
    python bench/team_setup.py --symbols 4
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from btc_lstm.candles import datetime_to_ms  # noqa: E402
from tests.exchange_server import (  # noqa: E402
    BinanceState,
    binance_ccxt_config,
    run_binance_server,
)
from tests.factories import make_candles  # noqa: E402

PREFECT = [sys.executable, "-m", "prefect"]
WORKER_SUBMISSION = re.compile(r"Worker '([^']+)' submitting flow run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--epochs", type=int, default=5)
    arguments = parser.parse_args()

    workspace = Path(tempfile.mkdtemp(prefix="btc-lstm-team-"))
    suffix = workspace.name.rsplit("-", 1)[-1].lower()
    prefect_database = f"btc_lstm_team_prefect_{suffix}"
    store_database = f"btc_lstm_team_store_{suffix}"
    admin = sa.create_engine(arguments.postgres_url, isolation_level="AUTOCOMMIT")
    server_url = sa.make_url(arguments.postgres_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in (prefect_database, store_database):
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        environment = base_environment(workspace)
        environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = server_url.set(
            drivername="postgresql+asyncpg", database=prefect_database
        ).render_as_string(hide_password=False)
        environment["BTC_LSTM_DATABASE_URL"] = server_url.set(
            database=store_database
        ).render_as_string(hide_password=False)
        run_team(arguments, workspace, environment, processes)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        with admin.connect() as connection:
            for name in (prefect_database, store_database):
                connection.execute(
                    sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
        admin.dispose()
        shutil.rmtree(workspace, ignore_errors=True)


def base_environment(workspace: Path) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "BTC_LSTM_"))
    }
    environment["PREFECT_HOME"] = str(workspace / "prefect")
    environment["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    environment["PREFECT_WORKER_QUERY_SECONDS"] = "2"
    return environment


def run_team(
    arguments: argparse.Namespace,
    workspace: Path,
    environment: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    processes.append(
        start(
            PREFECT + ["server", "start", "--port", str(port)],
            environment,
            workspace / "server.log",
        )
    )
    wait_for_health(api_url)
    environment["PREFECT_API_URL"] = api_url

    run(PREFECT + ["work-pool", "create", "btc-lstm", "--type", "process"], environment)
    run(PREFECT + ["--no-prompt", "deploy", "--name", "daily"], environment)

    symbols, state, start_day = market_data(arguments.symbols)
    with run_binance_server(state) as exchange_url:
        worker_environment = {
            **environment,
            "BTC_LSTM_CCXT_CONFIG": json.dumps(binance_ccxt_config(exchange_url)),
            "BTC_LSTM_HISTORY_START": start_day,
            "BTC_LSTM_EPOCHS": str(arguments.epochs),
        }
        for name in ("worker-a", "worker-b"):
            processes.append(
                start(
                    PREFECT
                    + [
                        "worker",
                        "start",
                        "--pool",
                        "btc-lstm",
                        "--name",
                        name,
                        "--limit",
                        "1",
                    ],
                    worker_environment,
                    workspace / f"{name}.log",
                )
            )

        # The parent run waits for the others, so it runs here rather than on a
        # worker, where it would hold one of the two slots.
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = environment["PREFECT_HOME"]
        from flows.pipeline import daily

        started = time.perf_counter()
        parent = daily(
            symbols=symbols, fan_out_deployment="daily/daily", return_state=True
        )
        report(parent, symbols, time.perf_counter() - started)


def market_data(symbol_count: int) -> tuple[list[str], BinanceState, str]:
    today = pd.Timestamp.now(tz="UTC").normalize()
    start_day = today - pd.Timedelta(days=799)
    markets = {
        f"COIN{index}USDT": (
            f"COIN{index}",
            "USDT",
            make_candles(800, start=start_day.isoformat(), seed=index),
        )
        for index in range(symbol_count)
    }
    state = BinanceState(markets=markets)
    state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    symbols = [f"COIN{index}/USDT" for index in range(symbol_count)]
    return symbols, state, start_day.date().isoformat()


def report(parent: Any, symbols: list[str], wall_seconds: float) -> None:
    """Print which worker ran each symbol's run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        names = [f"daily-{symbol.replace('/', '-').lower()}" for symbol in symbols]
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names))
        )
        print(f"parent run: {parent.type.value} in {wall_seconds:.0f} s")
        print("| symbol | flow run | worker | state |")
        print("| --- | --- | --- | --- |")
        for child in sorted(children, key=lambda run: run.name):
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[child.id])),
                limit=200,
            )
            # A worker may try a run and back off when another got it first. The
            # last submission in the run's log is the one that ran it.
            workers = [
                match.group(1)
                for log in logs
                if (match := WORKER_SUBMISSION.search(log.message))
            ]
            symbol = child.parameters.get("symbols", ["?"])[0]
            print(
                f"| {symbol} | {child.name} | {workers[-1] if workers else '?'} | "
                f"{child.state.type.value if child.state else '?'} |"
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_health(api_url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"Prefect server at {api_url} did not respond within 180 s")


def start(
    command: list[str], environment: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=REPOSITORY,
        env=environment,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


def run(command: list[str], environment: dict[str, str]) -> str:
    completed = subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[2:])} failed:\n{completed.stdout}\n{completed.stderr}"
        )
    return completed.stdout


if __name__ == "__main__":
    main()
