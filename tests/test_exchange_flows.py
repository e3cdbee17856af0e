"""Flow runs over several exchanges and timeframes, against loopback exchanges."""

import datetime as dt
import json
import os

import pandas as pd
import pytest

from btc_lstm.candles import Series, datetime_to_ms, last_closed_open_ms
from btc_lstm.cli import main
from btc_lstm.errors import (
    ExchangeUnavailableError,
    InsufficientHistoryError,
)
from btc_lstm.store import count_candles, load_latest_forecast, load_latest_model_run
from flows.pipeline import daily, ingest
from tests.conftest import make_candles
from tests.exchange_server import (
    ExchangeState,
    binance_ccxt_config,
    kraken_ccxt_config,
    run_binance_server,
    run_kraken_server,
)

pytestmark = pytest.mark.slow

SMALL_MODEL = {
    "window_candles": 120,
    "lookback_candles": 10,
    "horizon_candles": 3,
    "epochs": 2,
}
BINANCE_BTC = Series("binance", "BTC/USDT", "1d")
BINANCE_ETH = Series("binance", "ETH/USDT", "1d")
KRAKEN_BTC = Series("kraken", "BTC/USD", "1d")


def candles_until_now(count, timeframe_ms, anchor_offset_ms=0, seed=7):
    """Return `count` candles whose last one is open now."""
    now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    open_ms = last_closed_open_ms(now_ms, timeframe_ms, anchor_offset_ms)
    current_open = pd.Timestamp(open_ms + timeframe_ms, unit="ms", tz="UTC")
    start = current_open - (count - 1) * pd.Timedelta(timeframe_ms, "ms")
    frequency = pd.Timedelta(timeframe_ms, "ms")
    return make_candles(count, start=start.isoformat(), frequency=frequency, seed=seed)


def artifact_markdown(flow_run_id, key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=key_filter)
    (artifact,) = [item for item in artifacts if item.flow_run_id == flow_run_id]
    return artifact.data


@pytest.fixture
def exchanges(monkeypatch):
    """Serve 200 daily candles each of Binance BTC/USDT and ETH/USDT and of Kraken
    BTC/USD, the last ones still open; Binance is the default exchange."""
    binance = ExchangeState(
        markets={
            "BTCUSDT": ("BTC", "USDT", candles_until_now(200, 86_400_000)),
            "ETHUSDT": ("ETH", "USDT", candles_until_now(200, 86_400_000, seed=3)),
        }
    )
    kraken = ExchangeState(
        markets={"XXBTZUSD": ("XXBT", "ZUSD", candles_until_now(200, 86_400_000, 0, 5))}
    )
    binance.now_ms = kraken.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    start = binance.markets["BTCUSDT"][2]["open_time"].iloc[0]
    with (
        run_binance_server(binance) as binance_url,
        run_kraken_server(kraken) as kraken_url,
    ):
        monkeypatch.setenv(
            "BTC_LSTM_CCXT_CONFIG", json.dumps(binance_ccxt_config(binance_url))
        )
        monkeypatch.setenv(
            "BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE",
            json.dumps({"kraken": kraken_ccxt_config(kraken_url)}),
        )
        monkeypatch.setenv("BTC_LSTM_HISTORY_START", start.date().isoformat())
        monkeypatch.setenv("BTC_LSTM_FETCH_RETRIES", "1")
        monkeypatch.setenv("BTC_LSTM_FETCH_RETRY_DELAY_SECONDS", "0")
        yield binance, kraken


class TestSeveralExchanges:
    def test_each_series_is_fetched_trained_and_forecast(
        self, flow_environment, open_engine, exchanges
    ):
        from prefect.client.orchestration import get_client

        engine = open_engine(flow_environment)
        started = dt.datetime.now(dt.UTC)

        state = daily(
            symbols=["BTC/USDT", "ETH/USDT", "kraken:BTC/USD"],
            **SMALL_MODEL,
            return_state=True,
        )

        summary = state.result()
        for series in (BINANCE_BTC, BINANCE_ETH, KRAKEN_BTC):
            assert count_candles(engine, series) == 199, series
            assert len(load_latest_forecast(engine, series)) == 3, series
        assert len(summary["forecasts"]) == 3
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs()
        fetch_runs = [
            run
            for run in task_runs
            if run.name.startswith("fetch_candles") and run.created >= started
        ]
        assert len(fetch_runs) == 3

    def test_failed_exchange_spares_the_others(
        self, flow_environment, open_engine, exchanges
    ):
        engine = open_engine(flow_environment)
        _, kraken = exchanges
        kraken.failure = (520, "<html>520: Web server is returning an error</html>")

        state = daily(
            symbols=["BTC/USDT", "kraken:BTC/USD", "ETH/USDT"],
            **SMALL_MODEL,
            return_state=True,
        )

        assert state.is_failed()
        with pytest.raises(ExchangeUnavailableError, match="kraken"):
            state.result()
        assert len(load_latest_forecast(engine, BINANCE_BTC)) == 3
        assert len(load_latest_forecast(engine, BINANCE_ETH)) == 3
        assert load_latest_model_run(engine, KRAKEN_BTC) is None
        markdown = artifact_markdown(state.state_details.flow_run_id, "daily-summary")
        assert (
            "- ExchangeUnavailableError: kraken BTC/USD 1d: kraken: load markets"
            in markdown
        )
        assert "| binance ETH/USDT 1d | 199 | 199 |" in markdown

    def test_every_failure_is_in_the_summary(self, flow_environment, exchanges):
        _, kraken = exchanges
        kraken.failure = (520, "<html>520: Web server is returning an error</html>")

        state = daily(
            symbols=["DOGE/EUR", "kraken:BTC/USD", "BTC/USDT"],
            **SMALL_MODEL,
            return_state=True,
        )

        markdown = artifact_markdown(state.state_details.flow_run_id, "daily-summary")
        failures = markdown.split("## Failures")[1]
        expected = "UnknownSymbolError: binance DOGE/EUR 1d: binance does not list"
        assert expected in failures
        assert "ExchangeUnavailableError: kraken BTC/USD 1d: kraken: load" in failures

    def test_symbols_and_configs_as_cli_flags(
        self, flow_environment, open_engine, exchanges, monkeypatch
    ):
        engine = open_engine(flow_environment)
        configs = json.loads(os.environ["BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE"])
        monkeypatch.delenv("BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE")

        code = main(
            [
                "ingest",
                "--symbols",
                "kraken:BTC/USD,ETH/USDT",
                "--ccxt-config-by-exchange",
                json.dumps(configs),
            ]
        )

        assert code == 0
        assert count_candles(engine, KRAKEN_BTC) == 199
        assert count_candles(engine, BINANCE_ETH) == 199


class TestGaps:
    def test_missing_day_skips_training_of_its_series(
        self, flow_environment, open_engine, exchanges
    ):
        engine = open_engine(flow_environment)
        binance, _ = exchanges
        btc_times = binance.markets["BTCUSDT"][2]["open_time"]
        missing_day = btc_times.iloc[150]
        binance.faults.missing_open_times = {missing_day}
        binance.faults.only_market_ids = {"BTCUSDT"}

        state = daily(
            symbols=["BTC/USDT", "ETH/USDT"], **SMALL_MODEL, return_state=True
        )

        with pytest.raises(InsufficientHistoryError) as error:
            state.result()
        assert f"{missing_day:%Y-%m-%d %H:%M}" in str(error.value)
        assert "1 candles missing inside the training window" in str(error.value)
        assert load_latest_model_run(engine, BINANCE_BTC) is None
        assert len(load_latest_forecast(engine, BINANCE_ETH)) == 3
        flow_run_id = state.state_details.flow_run_id
        summary = artifact_markdown(flow_run_id, "daily-summary")
        assert "## Missing candles" in summary
        expected = (
            f"binance BTC/USDT 1d: 1 missing, open times {missing_day.isoformat()}"
        )
        assert expected in summary

    def test_ingest_flow_reports_refetch(self, flow_environment, exchanges):
        binance, _ = exchanges
        btc_times = binance.markets["BTCUSDT"][2]["open_time"]
        binance.faults.flaky_open_times = {btc_times.iloc[20]}
        binance.faults.missing_open_times = {btc_times.iloc[40], btc_times.iloc[41]}

        state = ingest(symbols=["BTC/USDT"], return_state=True)

        (result,) = state.result()
        assert result["refetched"] == 1
        assert result["missing"] == 2
        markdown = artifact_markdown(state.state_details.flow_run_id, "ingest-summary")
        assert "| binance BTC/USDT 1d | 197 | 197 | 0 | 0 | 1 | 2 |" in markdown
        assert btc_times.iloc[41].isoformat() in markdown


class TestTimeframes:
    def test_four_hour_candles_end_to_end(
        self, flow_environment, open_engine, monkeypatch
    ):
        engine = open_engine(flow_environment)
        candles = candles_until_now(200, 4 * 3_600_000)
        state = ExchangeState(markets={"BTCUSDT": ("BTC", "USDT", candles)})
        state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
        with run_binance_server(state) as api_url:
            monkeypatch.setenv(
                "BTC_LSTM_CCXT_CONFIG", json.dumps(binance_ccxt_config(api_url))
            )
            daily(
                timeframe="4h",
                history_start=candles["open_time"].iloc[0].date(),
                **SMALL_MODEL,
            )

        series = Series("binance", "BTC/USDT", "4h")
        newest_closed = candles["open_time"].iloc[-2]
        assert count_candles(engine, series) == 199
        forecast = load_latest_forecast(engine, series)
        assert (forecast["as_of_open_time"] == newest_closed).all()
        assert list(forecast["target_open_time"]) == [
            newest_closed + pd.Timedelta(hours=4 * step) for step in (1, 2, 3)
        ]

    def test_hourly_candles_through_cli(
        self, flow_environment, open_engine, monkeypatch
    ):
        engine = open_engine(flow_environment)
        candles = candles_until_now(200, 3_600_000)
        state = ExchangeState(markets={"BTCUSDT": ("BTC", "USDT", candles)})
        state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
        with run_binance_server(state) as api_url:
            code = main(
                [
                    "run",
                    "--timeframe",
                    "1h",
                    "--history-start",
                    candles["open_time"].iloc[0].date().isoformat(),
                    "--ccxt-config",
                    json.dumps(binance_ccxt_config(api_url)),
                    "--window-candles",
                    "120",
                    "--lookback-candles",
                    "10",
                    "--horizon-candles",
                    "3",
                    "--epochs",
                    "2",
                ]
            )

        assert code == 0
        series = Series("binance", "BTC/USDT", "1h")
        newest_closed = candles["open_time"].iloc[-2]
        forecast = load_latest_forecast(engine, series)
        assert (forecast["as_of_open_time"] == newest_closed).all()
        assert list(forecast["target_open_time"]) == [
            newest_closed + pd.Timedelta(hours=step) for step in (1, 2, 3)
        ]

    def test_daily_candles_at_16_utc_end_to_end(
        self, flow_environment, open_engine, monkeypatch
    ):
        engine = open_engine(flow_environment)
        candles = candles_until_now(200, 86_400_000, anchor_offset_ms=16 * 3_600_000)
        state = ExchangeState(markets={"BTCUSDT": ("BTC", "USDT", candles)})
        state.now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
        with run_binance_server(state) as api_url:
            monkeypatch.setenv(
                "BTC_LSTM_CCXT_CONFIG", json.dumps(binance_ccxt_config(api_url))
            )
            daily(history_start=candles["open_time"].iloc[0].date(), **SMALL_MODEL)

        newest_closed = candles["open_time"].iloc[-2]
        assert newest_closed.hour == 16
        assert count_candles(engine, BINANCE_BTC) == 199
        forecast = load_latest_forecast(engine, BINANCE_BTC)
        assert (forecast["as_of_open_time"] == newest_closed).all()
        assert list(forecast["target_open_time"]) == [
            newest_closed + pd.Timedelta(days=step) for step in (1, 2, 3)
        ]
