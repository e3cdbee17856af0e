"""Paging, faults and error mapping through ccxt's real Binance and Kraken clients.

The loopback servers in tests/exchange_server.py respond in each exchange's wire
format; `Faults` switches on one misbehaviour per test.
"""

import datetime as dt
import logging

import ccxt
import pandas as pd
import pytest

from btc_lstm.candles import (
    Series,
    datetime_to_ms,
    find_invalid_candles,
    last_closed_open_ms,
)
from btc_lstm.errors import (
    ExchangeError,
    ExchangeUnavailableError,
    MixedAnchorError,
    UnknownSymbolError,
)
from btc_lstm.exchange import create_exchange, fetch_closed_candles
from btc_lstm.ingest import MAX_LISTED_MISSING, ingest_from_exchange
from btc_lstm.store import load_candles
from tests.conftest import make_candles
from tests.exchange_server import (
    BAD_REQUEST,
    MAINTENANCE,
    MALFORMED,
    RATE_LIMIT,
    SERVER_ERROR,
    SLOW,
    ExchangeState,
    binance_ccxt_config,
    kraken_ccxt_config,
    run_binance_server,
    run_kraken_server,
)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
START = dt.date(2017, 1, 1)
BINANCE_BTC = Series("binance", "BTC/USDT", "1d")
KRAKEN_BTC = Series("kraken", "BTC/USD", "1d")
# Retries of a failed page wait no time in these tests.
NO_WAIT = 0.0


def serve_until_open(candles):
    """Return a state whose clock is noon of the last candle, so that it is open."""
    state = ExchangeState()
    state.now_ms = datetime_to_ms(candles["open_time"].iloc[-1]) + DAY_MS // 2
    return state


def candle_requests(state):
    return [
        path
        for path in state.requests
        if path.startswith(("/api/v3/klines", "/0/public/OHLC"))
    ]


@pytest.fixture
def binance():
    """Yield a fake Binance with 2500 daily BTC/USDT candles, and its ccxt config."""
    candles = make_candles(2500, start=START.isoformat())
    state = serve_until_open(candles)
    state.markets["BTCUSDT"] = ("BTC", "USDT", candles)
    with run_binance_server(state) as api_url:
        yield state, binance_ccxt_config(api_url)


@pytest.fixture
def kraken():
    """Yield a fake Kraken with 1000 daily XBT/USD candles, and its ccxt config."""
    candles = make_candles(1000, start="2022-01-01", seed=5)
    state = serve_until_open(candles)
    state.markets["XXBTZUSD"] = ("XXBT", "ZUSD", candles)
    with run_kraken_server(state) as api_url:
        yield state, kraken_ccxt_config(api_url)


def ingest(engine, series, exchange, **options):
    state, config = exchange
    return ingest_from_exchange(
        engine,
        series,
        START,
        {**config, **options},
        state.now_ms,
        page_retry_delay_seconds=NO_WAIT,
    )


def served_closed(state, market_id):
    """Return the candles the server holds that are closed by its clock."""
    candles = state.markets[market_id][2]
    closes_ms = candles["open_time"] + pd.Timedelta(DAY_MS, "ms")
    return candles[closes_ms <= pd.Timestamp(state.now_ms, unit="ms", tz="UTC")]


class TestKraken:
    def test_backfill_gets_only_newest_720(self, engine, kraken):
        state, _ = kraken

        result = ingest(engine, KRAKEN_BTC, kraken)

        stored = load_candles(engine, KRAKEN_BTC)
        served = state.markets["XXBTZUSD"][2]
        # Kraken keeps 720 candles, the newest of them still open.
        assert result.inserted == 719
        assert list(stored["open_time"]) == list(served["open_time"].iloc[-720:-1])
        assert stored["close"].to_numpy() == pytest.approx(
            served["close"].iloc[-720:-1].to_numpy(), rel=1e-6
        )
        assert result.missing == 0

    def test_markets_come_from_assets_and_pairs(self, engine, kraken):
        state, _ = kraken

        ingest(engine, KRAKEN_BTC, kraken)

        assert state.requests[:2] == ["/0/public/Assets", "/0/public/AssetPairs"]
        assert len(candle_requests(state)) == 1

    def test_resume_sends_since_in_seconds(self, engine, kraken):
        state, _ = kraken
        state.now_ms -= 2 * DAY_MS
        ingest(engine, KRAKEN_BTC, kraken)
        state.now_ms += 2 * DAY_MS
        state.requests.clear()

        result = ingest(engine, KRAKEN_BTC, kraken)

        assert result.inserted == 2
        newest_stored = state.markets["XXBTZUSD"][2]["open_time"].iloc[-4]
        # The fetch starts two candles before the newest stored one, to catch
        # revisions, and ccxt sends Kraken a `since` one interval before that.
        first_expected_s = datetime_to_ms(newest_stored) // 1000 - 2 * 86_400
        since_s = first_expected_s - 86_400
        assert candle_requests(state) == [
            f"/0/public/OHLC?pair=XXBTZUSD&interval=1440&since={since_s}"
        ]

    def test_open_candle_is_not_stored(self, engine, kraken):
        state, _ = kraken

        ingest(engine, KRAKEN_BTC, kraken)

        open_candle = state.markets["XXBTZUSD"][2]["open_time"].iloc[-1]
        assert open_candle not in set(load_candles(engine, KRAKEN_BTC)["open_time"])

    def test_four_hour_candles(self, engine):
        candles = make_candles(300, start="2024-01-01", frequency="4h")
        state = ExchangeState(markets={"XXBTZUSD": ("XXBT", "ZUSD", candles)})
        # Two hours into the last candle.
        state.now_ms = datetime_to_ms(candles["open_time"].iloc[-1]) + 2 * HOUR_MS
        series = Series("kraken", "BTC/USD", "4h")
        with run_kraken_server(state) as api_url:
            result = ingest(engine, series, (state, kraken_ccxt_config(api_url)))

        assert result.inserted == 299
        assert "interval=240" in candle_requests(state)[0]

    def test_unsupported_timeframe(self, engine, kraken):
        with pytest.raises(ExchangeError, match="kraken has no '2h' candles"):
            ingest(engine, Series("kraken", "BTC/USD", "2h"), kraken)

    def test_unlisted_symbol(self, engine, kraken):
        with pytest.raises(UnknownSymbolError, match="such as BTC/USD"):
            ingest(engine, Series("kraken", "ETH/EUR", "1d"), kraken)

    def test_rejected_pair_fails_at_once(self, engine, kraken):
        state, _ = kraken
        state.faults.rejected_market_ids = {"XXBTZUSD"}

        with pytest.raises(ExchangeError, match="EQuery:Unknown asset pair"):
            ingest(engine, KRAKEN_BTC, kraken)

        assert len(candle_requests(state)) == 1

    @pytest.mark.parametrize("kind", [RATE_LIMIT, MAINTENANCE, SERVER_ERROR])
    def test_temporary_errors_are_retried(self, engine, kraken, kind):
        state, _ = kraken
        state.faults.every = 1
        state.faults.kind = kind

        with pytest.raises(ExchangeUnavailableError, match="unreachable or busy"):
            ingest(engine, KRAKEN_BTC, kraken)

        # One try and three retries of the page, then nothing is stored.
        assert len(candle_requests(state)) == 4
        assert load_candles(engine, KRAKEN_BTC).empty

    def test_malformed_answer_is_not_an_empty_page(self, engine, kraken):
        state, _ = kraken
        state.faults.every = 1
        state.faults.kind = MALFORMED

        with pytest.raises(ExchangeUnavailableError, match="not valid candle JSON"):
            ingest(engine, KRAKEN_BTC, kraken)

        assert load_candles(engine, KRAKEN_BTC).empty

    def test_overlap_and_newest_first(self, engine, kraken):
        state, _ = kraken
        ingest(engine, KRAKEN_BTC, kraken)
        state.faults.newest_first = True
        state.faults.overlap_candles = 30
        state.now_ms += 3 * DAY_MS
        state.markets["XXBTZUSD"] = (
            "XXBT",
            "ZUSD",
            make_candles(1003, start="2022-01-01", seed=5),
        )

        result = ingest(engine, KRAKEN_BTC, kraken)

        stored = load_candles(engine, KRAKEN_BTC)
        assert result.inserted == 3
        assert stored["open_time"].is_monotonic_increasing
        assert stored["open_time"].is_unique


class TestPaging:
    def test_backfill_matches_served_candles(self, engine, binance):
        state, _ = binance

        result = ingest(engine, BINANCE_BTC, binance)

        stored = load_candles(engine, BINANCE_BTC)
        served = served_closed(state, "BTCUSDT")
        assert result.inserted == 2499
        assert list(stored["open_time"]) == list(served["open_time"])
        assert len(candle_requests(state)) == 3

    def test_newest_first_pages_are_sorted(self, engine, binance):
        state, _ = binance
        state.faults.newest_first = True

        result = ingest(engine, BINANCE_BTC, binance)

        stored = load_candles(engine, BINANCE_BTC)
        assert result.inserted == 2499
        assert stored["open_time"].is_monotonic_increasing

    def test_overlapping_pages_store_each_candle_once(self, engine, binance):
        state, _ = binance
        state.faults.overlap_candles = 50
        exchange = create_exchange("binance", binance[1])
        exchange.load_markets()

        candles = fetch_closed_candles(
            exchange,
            BINANCE_BTC,
            datetime_to_ms(pd.Timestamp(START)),
            state.now_ms,
            page_limit=300,
        )

        assert len(candles) == 2499
        assert candles["open_time"].is_unique
        # Each page after the first repeats 50 candles, so 2499 take 10 pages.
        assert len(candle_requests(state)) == 10

    def test_empty_page_inside_history_does_not_end_backfill(
        self, engine, binance, caplog
    ):
        state, _ = binance
        served = state.markets["BTCUSDT"][2]["open_time"]
        # 1200 days without candles, longer than one page of 1000.
        hole = set(served.iloc[800:2000])
        state.faults.missing_open_times = hole
        state.faults.window_pages = True

        with caplog.at_level(logging.INFO, logger="btc_lstm"):
            result = ingest(engine, BINANCE_BTC, binance)

        assert "no candles in the page from 2019-03-12" in caplog.text
        stored = set(load_candles(engine, BINANCE_BTC)["open_time"])
        assert result.inserted == 2499 - 1200
        assert served.iloc[2498] in stored
        assert not stored & hole
        assert result.missing == 1200
        assert result.missing_open_times[0] == served.iloc[800].isoformat()
        assert len(result.missing_open_times) == MAX_LISTED_MISSING

    def test_page_that_ignores_start_ends_paging(self, engine, binance, caplog):
        state, _ = binance
        state.faults.ignore_start = True

        with caplog.at_level(logging.WARNING, logger="btc_lstm"):
            result = ingest(engine, BINANCE_BTC, binance)

        # The first page contains 1000 new candles and its repeats contain none,
        # so the start moves on by a page each time until it passes the newest.
        assert result.inserted == 1000
        assert len(candle_requests(state)) == 3
        assert "exchange returned no candles after 2019-09-27" in caplog.text

    def test_caught_up_stops_after_one_request(self, engine, binance):
        state, _ = binance
        ingest(engine, BINANCE_BTC, binance)
        state.requests.clear()

        result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 0
        assert len(candle_requests(state)) == 1

    def test_open_candle_waits_for_its_close(self, engine, binance):
        state, _ = binance
        last_open = state.markets["BTCUSDT"][2]["open_time"].iloc[-1]
        state.now_ms = datetime_to_ms(last_open) + DAY_MS - 1
        ingest(engine, BINANCE_BTC, binance)
        assert load_candles(engine, BINANCE_BTC)["open_time"].iloc[-1] < last_open

        state.now_ms += 1
        result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 1
        assert load_candles(engine, BINANCE_BTC)["open_time"].iloc[-1] == last_open


class TestFaults:
    @pytest.mark.parametrize("kind", [RATE_LIMIT, SERVER_ERROR, MAINTENANCE])
    def test_failed_page_now_and_then_is_retried(self, engine, binance, kind, caplog):
        state, _ = binance
        state.faults.every = 2
        state.faults.kind = kind

        with caplog.at_level(logging.WARNING, logger="btc_lstm"):
            result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 2499
        # Requests 2 and 4 failed and were repeated.
        assert len(candle_requests(state)) == 5
        assert "retry 1 of 3" in caplog.text

    def test_answer_slower_than_timeout_is_retried(self, engine, binance, caplog):
        state, _ = binance
        state.faults.every = 2
        state.faults.kind = SLOW
        state.faults.slow_seconds = 1.0

        with caplog.at_level(logging.WARNING, logger="btc_lstm"):
            result = ingest(engine, BINANCE_BTC, binance, timeout=300)

        assert result.inserted == 2499
        assert "RequestTimeout" in caplog.text

    def test_timeout_every_time_fails_as_temporary(self, engine, binance):
        state, _ = binance
        state.faults.every = 1
        state.faults.kind = SLOW
        state.faults.slow_seconds = 0.5

        with pytest.raises(ExchangeUnavailableError, match="RequestTimeout"):
            ingest(engine, BINANCE_BTC, binance, timeout=200)

    def test_malformed_json_is_retried(self, engine, binance):
        state, _ = binance
        state.faults.every = 2
        state.faults.kind = MALFORMED

        result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 2499
        assert len(candle_requests(state)) == 5

    def test_missing_day_is_refetched_and_reported(self, engine, binance):
        state, _ = binance
        served = state.markets["BTCUSDT"][2]["open_time"]
        state.faults.missing_open_times = {served.iloc[1500]}

        result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 2498
        assert result.refetched == 0
        assert result.missing == 1
        assert result.missing_open_times == [served.iloc[1500].isoformat()]
        refetch_ms = datetime_to_ms(served.iloc[1500])
        assert f"startTime={refetch_ms}" in candle_requests(state)[-1]

    def test_day_missing_once_is_filled_by_refetch(self, engine, binance):
        state, _ = binance
        served = state.markets["BTCUSDT"][2]["open_time"]
        state.faults.flaky_open_times = {served.iloc[100], served.iloc[1500]}

        result = ingest(engine, BINANCE_BTC, binance)

        assert result.inserted == 2499
        assert result.refetched == 2
        assert result.missing == 0
        assert len(load_candles(engine, BINANCE_BTC)) == 2499

    def test_listed_symbol_without_candles_is_not_retried(self, engine, binance):
        state, _ = binance
        state.faults.rejected_market_ids = {"BTCUSDT"}

        with pytest.raises(UnknownSymbolError, match="Invalid symbol"):
            ingest(engine, BINANCE_BTC, binance)

        assert len(candle_requests(state)) == 1

    def test_revised_candle_is_updated(self, engine, binance, caplog):
        state, _ = binance
        ingest(engine, BINANCE_BTC, binance)
        candles = state.markets["BTCUSDT"][2]
        newest_closed = candles.index[-2]
        candles.loc[newest_closed, ["close", "high"]] *= 1.05

        with caplog.at_level(logging.INFO, logger="btc_lstm"):
            result = ingest(engine, BINANCE_BTC, binance)

        assert result.updated == 1
        assert result.inserted == 0
        stored = load_candles(engine, BINANCE_BTC)
        assert stored["close"].iloc[-1] == pytest.approx(candles["close"].iloc[-2])
        assert "stored 0 new and 1 revised candles from binance" in caplog.text


class TestErrorMapping:
    def test_exchange_without_ohlcv_fails_before_requests(self, engine):
        series = Series("bitflyer", "BTC/JPY", "1d")

        with pytest.raises(ExchangeError, match="bitflyer offers no OHLCV candles"):
            ingest_from_exchange(engine, series, START, {}, 0)

    def test_rejected_request_is_not_retried(self, engine, kraken):
        state, _ = kraken
        state.faults.every = 1
        state.faults.kind = BAD_REQUEST

        with pytest.raises(ExchangeError, match=r"rejected the request \(BadRequest\)"):
            ingest(engine, KRAKEN_BTC, kraken)

        assert len(candle_requests(state)) == 1

    def test_ccxt_error_classes(self):
        from btc_lstm.exchange import call_exchange

        cases = [
            (ccxt.RequestTimeout("slow"), ExchangeUnavailableError),
            (ccxt.RateLimitExceeded("429"), ExchangeUnavailableError),
            (ccxt.DDoSProtection("418"), ExchangeUnavailableError),
            (ccxt.OnMaintenance("upgrade"), ExchangeUnavailableError),
            (ccxt.ExchangeNotAvailable("503"), ExchangeUnavailableError),
            (ccxt.BadResponse("not json"), ExchangeUnavailableError),
            (ccxt.BadSymbol("no such pair"), UnknownSymbolError),
            (ccxt.BadRequest("bad since"), ExchangeError),
            (ccxt.NotSupported("no candles"), ExchangeError),
        ]
        for raised, expected in cases:

            def fail(error=raised):
                raise error

            with pytest.raises(expected) as caught:
                call_exchange(fail, "binance: test")
            assert type(caught.value) is expected, raised
            assert "\n" not in str(caught.value)


class TestAnchor:
    def test_daily_candles_at_16_utc_keep_open_times(self, engine):
        candles = make_candles(400, start="2023-01-01 16:00")
        state = serve_until_open(candles)
        state.markets["BTCUSDT"] = ("BTC", "USDT", candles)
        with run_binance_server(state) as api_url:
            result = ingest(engine, BINANCE_BTC, (state, binance_ccxt_config(api_url)))

        stored = load_candles(engine, BINANCE_BTC)
        assert result.inserted == 399
        assert (stored["open_time"].dt.hour == 16).all()
        assert stored["open_time"].iloc[-1] == candles["open_time"].iloc[-2]

    def test_closed_rule_follows_anchor(self):
        anchor_ms = 16 * HOUR_MS
        now_ms = datetime_to_ms(dt.datetime(2024, 5, 10, 12, tzinfo=dt.UTC))

        newest_ms = last_closed_open_ms(now_ms, DAY_MS, anchor_ms)

        # The candle of 9 May 16:00 closes at 10 May 16:00, after noon.
        expected = dt.datetime(2024, 5, 8, 16, tzinfo=dt.UTC)
        assert newest_ms == datetime_to_ms(expected)
        assert last_closed_open_ms(now_ms, DAY_MS) == datetime_to_ms(
            dt.datetime(2024, 5, 9, tzinfo=dt.UTC)
        )

    def test_anchor_change_is_an_error(self, engine, binance):
        state, _ = binance
        ingest(engine, BINANCE_BTC, binance)
        shifted = state.markets["BTCUSDT"][2].copy()
        shifted["open_time"] += pd.Timedelta(hours=16)
        state.markets["BTCUSDT"] = ("BTC", "USDT", shifted)
        state.now_ms += DAY_MS

        with pytest.raises(MixedAnchorError, match="opens 16:00 into its period"):
            ingest(engine, BINANCE_BTC, binance)

    def test_mixed_anchors_in_one_frame_are_invalid(self):
        candles = make_candles(5, start="2024-01-01 16:00")
        candles.loc[2, "open_time"] = pd.Timestamp("2024-01-03 00:00", tz="UTC")

        reasons = find_invalid_candles(candles, DAY_MS)

        assert list(reasons != "") == [False, False, True, False, False]
        assert "aligned" in reasons.iloc[2]

    def test_explicit_anchor_rejects_midnight_candles(self):
        candles = make_candles(3, start="2024-01-01")

        reasons = find_invalid_candles(candles, DAY_MS, 16 * HOUR_MS)

        assert (reasons != "").all()


class TestCommandLine:
    def test_unknown_exchange_prefix_fails_before_flow(self, capsys, database_url):
        from btc_lstm.cli import main

        code = main(
            ["ingest", "--database-url", database_url, "--symbols", "krakn:BTC/USD"]
        )

        assert code == 1
        assert "unknown exchange id 'krakn'" in capsys.readouterr().err
