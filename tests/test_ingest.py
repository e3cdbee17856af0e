"""Ingest through ccxt's real Binance client against a loopback Binance server."""

import datetime as dt
import logging
import socket

import pandas as pd
import pytest

from btc_lstm.candles import Series, datetime_to_ms
from btc_lstm.errors import (
    ConfigError,
    ExchangeError,
    ExchangeUnavailableError,
    UnknownExchangeError,
    UnknownSymbolError,
)
from btc_lstm.ingest import RECHECKED_CANDLES, ingest_from_exchange
from btc_lstm.store import load_candles, load_rejected_candles
from tests.conftest import make_candles
from tests.exchange_server import BinanceState, binance_ccxt_config, run_binance_server

SERIES = Series("binance", "BTC/USDT", "1d")
HALF_DAY_MS = 43_200_000
DAY_MS = 86_400_000
START = dt.date(2022, 1, 1)


@pytest.fixture
def binance():
    """Yield the fake exchange's state and the ccxt config that reaches it."""
    candles = make_candles(1200, start=START.isoformat())
    state = BinanceState(markets={"BTCUSDT": ("BTC", "USDT", candles)})
    # The server's clock is noon of the last day, so that day's candle is open.
    state.now_ms = datetime_to_ms(candles["open_time"].iloc[-1]) + HALF_DAY_MS
    with run_binance_server(state) as api_url:
        yield state, binance_ccxt_config(api_url)


def klines_requests(state):
    return [path for path in state.requests if path.startswith("/api/v3/klines")]


class TestIngestFromExchange:
    def test_backfill_stores_closed_candles_only(self, engine, binance):
        state, config = binance

        result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)
        stored = load_candles(engine, SERIES)

        assert result.inserted == 1199
        assert len(stored) == 1199
        assert stored["open_time"].iloc[0] == pd.Timestamp("2022-01-01", tz="UTC")
        open_candle = state.markets["BTCUSDT"][2]["open_time"].iloc[-1]
        assert open_candle not in set(stored["open_time"])

    def test_backfill_pages_through_history(self, engine, binance):
        state, config = binance

        ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        # ccxt lists 1000 klines as Binance's largest page, and each request
        # sets that limit.
        requests = klines_requests(state)
        assert len(requests) == 2
        assert all("limit=1000" in path for path in requests)

    def test_stored_prices_match_exchange(self, engine, binance):
        state, config = binance

        ingest_from_exchange(engine, SERIES, START, config, state.now_ms)
        stored = load_candles(engine, SERIES)

        served = state.markets["BTCUSDT"][2].iloc[:-1].reset_index(drop=True)
        assert stored["close"].to_numpy() == pytest.approx(
            served["close"].to_numpy(), rel=1e-8
        )

    def test_resumes_after_last_stored_candle(self, engine, binance):
        state, config = binance
        candles = state.markets["BTCUSDT"][2]
        state.now_ms -= 2 * 86_400_000
        ingest_from_exchange(engine, SERIES, START, config, state.now_ms)
        state.requests.clear()
        state.now_ms += 2 * 86_400_000

        result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        assert result.inserted == 2
        first_request = klines_requests(state)[0]
        # The newest stored candles are fetched again to pick up revisions.
        newest_stored = candles["open_time"].iloc[-4]
        resume_ms = datetime_to_ms(newest_stored) - (RECHECKED_CANDLES - 1) * DAY_MS
        assert f"startTime={resume_ms}" in first_request

    def test_nothing_new_stores_nothing(self, engine, binance):
        state, config = binance
        ingest_from_exchange(engine, SERIES, START, config, state.now_ms)
        state.requests.clear()

        result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        assert result.inserted == 0
        assert result.updated == 0
        assert result.received == RECHECKED_CANDLES
        assert len(klines_requests(state)) == 1

    def test_open_candle_is_stored_once_it_closes(self, engine, binance):
        state, config = binance
        ingest_from_exchange(engine, SERIES, START, config, state.now_ms)
        state.now_ms += HALF_DAY_MS

        result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        assert result.inserted == 1
        assert load_candles(engine, SERIES)["close"].iloc[-1] == pytest.approx(
            state.markets["BTCUSDT"][2]["close"].iloc[-1]
        )


class TestRejectedCandles:
    def test_bad_candle_goes_to_rejects(self, engine, binance, caplog):
        state, config = binance
        candles = state.markets["BTCUSDT"][2]
        bad_day = candles["open_time"].iloc[100]
        candles.loc[100, "high"] = candles.loc[100, "low"] / 2

        with caplog.at_level(logging.WARNING, logger="btc_lstm"):
            result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        rejects = load_rejected_candles(engine, SERIES)
        assert (result.received, result.inserted, result.rejected) == (1199, 1198, 1)
        assert bad_day not in set(load_candles(engine, SERIES)["open_time"])
        assert list(rejects["open_time"]) == [bad_day]
        assert rejects["source"].iloc[0] == "binance"
        assert rejects["reason"].iloc[0] == "high below open, close or low"
        assert rejects["high"].iloc[0] == pytest.approx(candles.loc[100, "high"])
        assert (
            f"binance BTC/USDT 1d: rejected 1 candles from binance, first at {bad_day}"
        ) in caplog.text

    def test_result_counts_rejects(self, engine, binance):
        state, config = binance
        candles = state.markets["BTCUSDT"][2]
        candles.loc[[10, 20], "volume"] = -1.0

        result = ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        assert result.as_dict()["rejected"] == 2
        assert len(load_rejected_candles(engine)) == 2


class TestExchangeErrors:
    def test_unknown_exchange_id(self, engine):
        with pytest.raises(UnknownExchangeError, match="unknown exchange id 'binanse'"):
            ingest_from_exchange(
                engine, Series("binanse", "BTC/USDT", "1d"), START, {}, 0
            )

    def test_unknown_symbol_lists_examples(self, engine, binance):
        state, config = binance
        series = Series("binance", "DOGE/EUR", "1d")

        with pytest.raises(UnknownSymbolError, match="such as BTC/USDT"):
            ingest_from_exchange(engine, series, START, config, state.now_ms)

    def test_unsupported_timeframe(self, engine, binance):
        state, config = binance
        series = Series("binance", "BTC/USDT", "5h")

        with pytest.raises(ExchangeError, match="has no '5h' candles"):
            ingest_from_exchange(engine, series, START, config, state.now_ms)

    def test_wrong_ccxt_option_type(self, engine, binance):
        state, config = binance

        with pytest.raises(ConfigError, match="BTC_LSTM_CCXT_CONFIG"):
            ingest_from_exchange(
                engine, SERIES, START, {**config, "timeout": "abc"}, state.now_ms
            )

    def test_exchange_without_markets(self, engine, binance):
        state, config = binance
        state.markets.clear()

        with pytest.raises(ExchangeError, match="returned no markets"):
            ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

    def test_unreachable_exchange_is_temporary(self, engine):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        config = binance_ccxt_config(f"http://127.0.0.1:{closed_port}/api/v3")

        with pytest.raises(ExchangeUnavailableError, match="exchange unreachable"):
            ingest_from_exchange(engine, SERIES, START, config, 0)

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (429, '{"code":-1003,"msg":"Too many requests"}'),
            (503, "<html>Service Unavailable</html>"),
        ],
    )
    def test_rate_limit_and_outage_are_temporary(self, engine, binance, status, body):
        state, config = binance
        state.failure = (status, body)

        with pytest.raises(ExchangeUnavailableError):
            ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

    def test_failed_fetch_stores_nothing(self, engine, binance):
        state, config = binance
        state.failure = (503, "<html>Service Unavailable</html>")

        with pytest.raises(ExchangeUnavailableError):
            ingest_from_exchange(engine, SERIES, START, config, state.now_ms)

        assert load_candles(engine, SERIES).empty
