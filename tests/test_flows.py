"""Real Prefect flow runs against a temporary Prefect server and a real database."""

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.candles import Series, datetime_to_ms
from btc_lstm.csv_import import read_candle_csv
from btc_lstm.errors import (
    ConfigError,
    ExchangeUnavailableError,
    FanOutError,
    UnknownSymbolError,
)
from btc_lstm.store import (
    count_candles,
    load_candles,
    load_latest_forecast,
    load_rejected_candles,
)
from btc_lstm.store.schema import model_runs, ohlcv, predictions
from flows.pipeline import daily, ingest
from tests.conftest import make_candles
from tests.exchange_server import BinanceState, binance_ccxt_config, run_binance_server

pytestmark = pytest.mark.slow

BTC = Series("binance", "BTC/USDT", "1d")
SMALL_MODEL = {
    "window_candles": 120,
    "lookback_candles": 10,
    "horizon_candles": 3,
    "epochs": 2,
}


def row_count(engine, table):
    with engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(table)
        return connection.execute(query).scalar_one()


@pytest.fixture
def binance_until_now(monkeypatch):
    """Serve 200 daily BTC/USDT candles whose last one opened today (still open)."""
    today = pd.Timestamp.now(tz="UTC").normalize()
    start = today - pd.Timedelta(days=199)
    candles = make_candles(200, start=start.isoformat())
    state = BinanceState(markets={"BTCUSDT": ("BTC", "USDT", candles)})
    state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    with run_binance_server(state) as api_url:
        monkeypatch.setenv(
            "BTC_LSTM_CCXT_CONFIG", json.dumps(binance_ccxt_config(api_url))
        )
        monkeypatch.setenv("BTC_LSTM_HISTORY_START", start.date().isoformat())
        monkeypatch.setenv("BTC_LSTM_FETCH_RETRIES", "1")
        monkeypatch.setenv("BTC_LSTM_FETCH_RETRY_DELAY_SECONDS", "0")
        yield state, candles


class TestDailyOnSharedFile:
    def test_daily_flow_on_real_btc_file(self, flow_environment, open_engine, btc_csv):
        engine = open_engine(flow_environment)

        summary = daily(csv_paths=[str(btc_csv)], epochs=2)

        file_days = read_candle_csv(btc_csv).candles["open_time"]
        stored = load_candles(engine, BTC)
        assert list(stored["open_time"]) == list(file_days)

        forecast = load_latest_forecast(engine, BTC, model="lstm")
        last_day = pd.Timestamp("2025-03-16", tz="UTC")
        assert list(forecast["target_open_time"]) == [
            last_day + pd.Timedelta(days=step) for step in range(1, 8)
        ]
        assert (forecast["as_of_open_time"] == last_day).all()
        assert forecast["predicted_close"].map(pd.notna).all()
        assert (forecast["predicted_close"] > 0).all()
        assert forecast["predicted_close"].between(1_000, 1_000_000).all()
        run_ids = {result["model_run_id"] for result in summary["trained"]}
        assert set(forecast["model_run_id"]) == run_ids

        daily(csv_paths=[str(btc_csv)], epochs=2)

        assert row_count(engine, ohlcv) == 2769
        assert row_count(engine, model_runs) == 1
        # Seven steps each of the LSTM and the three baselines.
        assert row_count(engine, predictions) == 28


class TestDailyThroughExchange:
    def test_forecasts_day_after_last_closed_candle(
        self, flow_environment, open_engine, binance_until_now
    ):
        engine = open_engine(flow_environment)
        _, candles = binance_until_now

        daily(**SMALL_MODEL)

        yesterday = candles["open_time"].iloc[-2]
        assert count_candles(engine, BTC) == 199
        forecast = load_latest_forecast(engine, BTC)
        assert (forecast["as_of_open_time"] == yesterday).all()
        assert list(forecast["target_open_time"]) == [
            yesterday + pd.Timedelta(days=step) for step in (1, 2, 3)
        ]

    def test_source_as_flow_parameters(
        self, flow_environment, open_engine, binance_until_now, monkeypatch
    ):
        engine = open_engine(flow_environment)
        ccxt_config = json.loads(os.environ["BTC_LSTM_CCXT_CONFIG"])
        history_start = dt.date.fromisoformat(os.environ["BTC_LSTM_HISTORY_START"])
        monkeypatch.delenv("BTC_LSTM_CCXT_CONFIG")
        monkeypatch.delenv("BTC_LSTM_HISTORY_START")

        daily(ccxt_config=ccxt_config, history_start=history_start, **SMALL_MODEL)

        assert count_candles(engine, BTC) == 199

    def test_second_run_adds_no_rows(
        self, flow_environment, open_engine, binance_until_now
    ):
        engine = open_engine(flow_environment)
        daily(**SMALL_MODEL)
        counts = [
            row_count(engine, table) for table in (ohlcv, model_runs, predictions)
        ]

        daily(**SMALL_MODEL)

        assert [
            row_count(engine, table) for table in (ohlcv, model_runs, predictions)
        ] == counts

    def test_exchange_down_fails_after_retries(
        self, flow_environment, open_engine, binance_until_now
    ):
        state, _ = binance_until_now
        state.failure = (503, "<html>Service Unavailable</html>")

        with pytest.raises(ExchangeUnavailableError, match="exchange unreachable"):
            daily(**SMALL_MODEL)

        # One try plus BTC_LSTM_FETCH_RETRIES=1 retry, each stopping at exchangeInfo.
        assert state.requests == ["/api/v3/exchangeInfo"] * 2

    def test_run_after_outage_catches_up(
        self, flow_environment, open_engine, binance_until_now
    ):
        engine = open_engine(flow_environment)
        state, candles = binance_until_now
        state.now_ms -= 3 * 86_400_000
        daily(**SMALL_MODEL)
        state.now_ms += 3 * 86_400_000
        state.failure = (503, "<html>Service Unavailable</html>")
        with pytest.raises(ExchangeUnavailableError):
            daily(**SMALL_MODEL)
        state.failure = None

        daily(**SMALL_MODEL)

        yesterday = candles["open_time"].iloc[-2]
        assert count_candles(engine, BTC) == 199
        assert load_latest_forecast(engine, BTC)["as_of_open_time"].iloc[0] == yesterday
        # One forecast before the outage and one for the newest candle after it,
        # none for the days in between.
        assert row_count(engine, predictions) == 2 * 3 * 4
        assert row_count(engine, model_runs) == 2

    def test_bad_symbol_is_not_retried_and_spares_others(
        self, flow_environment, open_engine, binance_until_now
    ):
        engine = open_engine(flow_environment)
        state, _ = binance_until_now

        with pytest.raises(UnknownSymbolError, match="DOGE/EUR"):
            ingest(symbols=["DOGE/EUR", "BTC/USDT"])

        assert count_candles(engine, BTC) == 199
        assert state.requests.count("/api/v3/exchangeInfo") == 2


class TestSecrets:
    def test_database_password_stays_out_of_prefect(
        self, flow_environment, monkeypatch, btc_csv
    ):
        from prefect.client.orchestration import get_client
        from prefect.logging.handlers import APILogHandler

        url = sa.make_url(flow_environment)
        if url.get_backend_name() == "postgresql":
            # Trust authentication ignores the password, so any value connects.
            url = url.set(password="hunter2-secret")
            secret = "hunter2-secret"
        else:
            secret = str(url.database)
        monkeypatch.setenv(
            "BTC_LSTM_DATABASE_URL", url.render_as_string(hide_password=False)
        )

        daily(csv_paths=[str(btc_csv)], **SMALL_MODEL)

        APILogHandler().flush()
        logs = []
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(limit=200)
            # The API returns at most 200 log lines per request.
            while page := client.read_logs(limit=200, offset=len(logs)):
                logs.extend(page)
        assert runs
        assert logs
        for run in runs:
            assert secret not in json.dumps(run.parameters, default=str)
        for log in logs:
            assert secret not in log.message


class TestPartialFailure:
    def test_failed_symbol_skips_training_others_forecast(
        self, flow_environment, open_engine, binance_until_now
    ):
        engine = open_engine(flow_environment)

        with pytest.raises(UnknownSymbolError, match="DOGE/EUR"):
            daily(symbols=["DOGE/EUR", "BTC/USDT"], **SMALL_MODEL)

        assert len(load_latest_forecast(engine, BTC)) == 3
        assert row_count(engine, model_runs) == 1

    def test_exchange_down_trains_nothing(
        self, flow_environment, open_engine, binance_until_now, caplog
    ):
        engine = open_engine(flow_environment)
        state, _ = binance_until_now
        state.failure = (503, "<html>Service Unavailable</html>")

        with pytest.raises(ExchangeUnavailableError):
            daily(**SMALL_MODEL)

        assert row_count(engine, model_runs) == 0
        assert "need 120 closed 1d candles" not in caplog.text


class TestServe:
    def test_serve_creates_utc_schedule_for_timeframe(
        self, prefect_harness, database_url, tmp_path
    ):
        import subprocess
        import sys
        import time

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        from tests.conftest import REPOSITORY

        environment = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "BTC_LSTM_DATABASE_URL": database_url,
        }
        command = [sys.executable, "-m", "btc_lstm.cli", "serve"]
        server = subprocess.Popen(
            [*command, "--timeframe", "4h", "--symbols", "ETH/USDT"],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deployment = None
        try:
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 120
                while deployment is None and time.monotonic() < deadline:
                    assert server.poll() is None, server.stderr.read()[-2000:]
                    try:
                        deployment = client.read_deployment_by_name("daily/daily-4h")
                    except Exception:  # noqa: BLE001 - not created yet
                        time.sleep(1)
        finally:
            server.terminate()
            server.communicate(timeout=60)

        assert deployment is not None
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "5 */4 * * *"
        assert schedule.schedule.timezone == "UTC"
        assert deployment.parameters == {"symbols": ["ETH/USDT"], "timeframe": "4h"}


class TestArtifacts:
    def test_daily_run_leaves_markdown_summary(
        self, flow_environment, binance_until_now
    ):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        state = daily(**SMALL_MODEL, return_state=True)

        flow_run_id = state.state_details.flow_run_id
        key_filter = ArtifactFilter(key=ArtifactFilterKey(any_=["daily-summary"]))
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=key_filter)
        (artifact,) = [item for item in artifacts if item.flow_run_id == flow_run_id]
        assert "| binance BTC/USDT 1d | 199 | 199 | 0 | 0 |" in artifact.data
        assert "## Forecasts" in artifact.data
        assert "## Failures" not in artifact.data

    def test_summary_lists_failures(self):
        from flows.pipeline import summary_markdown

        markdown = summary_markdown(
            {"ingested": [], "trained": [], "forecasts": []},
            [ExchangeUnavailableError("binance: load markets failed")],
        )

        assert "- ExchangeUnavailableError: binance: load markets failed" in markdown

    def test_summary_counts_rejected_candles(self):
        from flows.pipeline import summary_markdown

        row = {
            "exchange": "yahoo",
            "symbol": "BTC/USD",
            "timeframe": "1d",
            "received": 5,
            "inserted": 4,
            "updated": 0,
            "rejected": 1,
            "last_open_time": "2024-03-05T00:00:00+00:00",
        }
        markdown = summary_markdown(
            {"ingested": [row], "trained": [], "forecasts": []}, []
        )

        assert "| series | received | new | revised | rejected | newest |" in markdown
        assert "| yahoo BTC/USD 1d | 5 | 4 | 0 | 1 | 2024-03-05" in markdown


class TestImportFlow:
    def test_result_counts_rejected_rows(self, flow_environment, open_engine):
        path = Path(__file__).parent / "data" / "BTC-USD.csv"

        (result,) = ingest(csv_paths=[str(path)])

        assert result["received"] == 5
        assert result["inserted"] == 4
        assert result["rejected"] == 1
        engine = open_engine(flow_environment)
        assert count_candles(engine, Series("yahoo", "BTC/USD", "1d")) == 4
        assert len(load_rejected_candles(engine)) == 1


class TestFanOut:
    def test_fan_out_rejects_csv_files(self, flow_environment, btc_csv):
        with pytest.raises(ConfigError, match="cannot be combined"):
            daily(csv_paths=[str(btc_csv)], fan_out_deployment="daily/daily")

    def test_missing_deployment_is_named(self, flow_environment):
        with pytest.raises(FanOutError, match="deployment 'daily/nowhere' not found"):
            daily(symbols=["BTC/USDT"], fan_out_deployment="daily/nowhere")

    def test_symbols_run_as_deployment_runs(
        self, flow_environment, open_engine, binance_until_now, tmp_path
    ):
        """`btc-lstm serve` executes the per-symbol runs that the parent starts."""
        import subprocess
        import sys
        import time

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        from tests.conftest import REPOSITORY

        state, candles = binance_until_now
        state.markets["ETHUSDT"] = (
            "ETH",
            "USDT",
            make_candles(200, seed=3).assign(open_time=candles["open_time"]),
        )
        engine = open_engine(flow_environment)
        environment = {
            **{
                name: value
                for name, value in os.environ.items()
                if name.startswith("BTC_LSTM_")
            },
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }
        environment.pop("BTC_LSTM_TEST_DATABASE_URL", None)
        model_flags = [
            "--window-candles",
            "120",
            "--lookback-candles",
            "10",
            "--horizon-candles",
            "3",
            "--epochs",
            "2",
        ]
        server = subprocess.Popen(
            [sys.executable, "-m", "btc_lstm.cli", "serve", *model_flags],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    assert server.poll() is None, server.stderr.read()[-2000:]
                    try:
                        client.read_deployment_by_name("daily/daily-1d")
                        break
                    except Exception:  # noqa: BLE001 - not created yet
                        time.sleep(1)

            summary = daily(
                symbols=["BTC/USDT", "ETH/USDT"], fan_out_deployment="daily/daily-1d"
            )
        finally:
            server.terminate()
            server.communicate(timeout=60)

        assert {run["state"] for run in summary["runs"].values()} == {"COMPLETED"}
        for symbol in ("BTC/USDT", "ETH/USDT"):
            series = Series("binance", symbol, "1d")
            assert len(load_latest_forecast(engine, series)) == 3
