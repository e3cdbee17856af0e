"""ccxt access: create the exchange, check the market, page through closed candles."""

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import ccxt
import pandas as pd

from btc_lstm.candles import CANDLE_COLUMNS, Series, ms_to_datetime
from btc_lstm.errors import (
    ConfigError,
    ExchangeError,
    ExchangeUnavailableError,
    MixedAnchorError,
    UnknownExchangeError,
    UnknownSymbolError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Candles per request for an exchange whose page size ccxt does not list.
DEFAULT_PAGE_LIMIT = 500
# A page that fails with a temporary error is requested again after 1, 2 and 4 s.
# If it still fails, the flow's task retries start the whole fetch over.
PAGE_RETRIES = 3
PAGE_RETRY_DELAY_SECONDS = 1.0


def check_exchange_id(exchange_id: str) -> None:
    """Check that ccxt supports an exchange id.

    Raises:
        UnknownExchangeError: ccxt has no exchange with this id.
    """
    if exchange_id not in ccxt.exchanges:
        raise UnknownExchangeError(
            f"unknown exchange id {exchange_id!r}; use a ccxt id such as binance, "
            "kraken or coinbase (the full list is ccxt.exchanges)"
        )


def create_exchange(exchange_id: str, ccxt_config: dict[str, Any]) -> ccxt.Exchange:
    """Create a ccxt exchange with rate limiting on and `ccxt_config` applied on top.

    Raises:
        UnknownExchangeError: ccxt has no exchange with this id.
    """
    check_exchange_id(exchange_id)
    exchange_class = getattr(ccxt, exchange_id)
    try:
        # The parsed JSON of each response distinguishes a malformed page from
        # an empty one (see _check_page).
        exchange: ccxt.Exchange = exchange_class(
            {"enableRateLimit": True, "enableLastJsonResponse": True, **ccxt_config}
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"invalid ccxt_config for {exchange_id}: {exc}; check the JSON in "
            "BTC_LSTM_CCXT_CONFIG against ccxt's exchange options"
        ) from exc
    return exchange


def check_market(exchange: ccxt.Exchange, series: Series) -> None:
    """Load the exchange's markets and check that it serves candles of `series`.

    Raises:
        ExchangeError: the exchange has no OHLCV endpoint (checked before any
            request) or lacks the timeframe.
        ExchangeUnavailableError: the exchange could not be reached.
        UnknownSymbolError: the exchange does not list the symbol.
    """
    if not exchange.has.get("fetchOHLCV"):
        raise ExchangeError(
            f"{exchange.id} offers no OHLCV candles through ccxt (has fetchOHLCV: "
            f"{exchange.has.get('fetchOHLCV')}); choose another exchange"
        )
    markets = call_exchange(exchange.load_markets, f"{exchange.id}: load markets")
    if not markets:
        raise ExchangeError(
            f"{exchange.id} returned no markets; if BTC_LSTM_CCXT_CONFIG points "
            "ccxt at a mirror, check that its urls serve the exchange's API"
        )
    if series.symbol not in markets:
        raise UnknownSymbolError(
            f"{exchange.id} does not list symbol {series.symbol!r}; use a unified "
            f"symbol from its markets, such as {_example_symbols(markets)}"
        )
    timeframes = exchange.timeframes or {}
    if timeframes and series.timeframe not in timeframes:
        raise ExchangeError(
            f"{exchange.id} has no {series.timeframe!r} candles; use one of "
            f"{', '.join(timeframes)}"
        )


def _example_symbols(markets: dict[str, Any]) -> str:
    examples = [symbol for symbol in markets if symbol.endswith("/USDT")][:3]
    return ", ".join(examples or list(markets)[:3]) or "none listed"


def call_exchange(function: Callable[[], T], operation: str) -> T:
    """Call ccxt and translate its errors into temporary and permanent ones.

    Temporary, worth a retry: ccxt's NetworkError, which covers timeouts
    (RequestTimeout), rate limits (DDoSProtection, RateLimitExceeded) and outages
    or maintenance (ExchangeNotAvailable, OnMaintenance), and BadResponse, a
    response that could not be parsed. Everything else is permanent.

    Raises:
        UnknownSymbolError: the exchange does not know the symbol (BadSymbol).
        ExchangeUnavailableError: a temporary failure.
        ExchangeError: the exchange rejected the request (BadRequest,
            AuthenticationError, NotSupported or another ccxt error).
        ConfigError: a ccxt option has a value of the wrong type.
    """
    try:
        return function()
    except ccxt.BadSymbol as exc:
        raise UnknownSymbolError(f"{operation} failed: {_first_line(exc)}") from exc
    except (ccxt.NetworkError, ccxt.BadResponse) as exc:
        raise ExchangeUnavailableError(
            f"{operation} failed, exchange unreachable or busy "
            f"({type(exc).__name__}): {_first_line(exc)}; check the network and the "
            "exchange's status, then run again"
        ) from exc
    except ccxt.NotSupported as exc:
        raise ExchangeError(
            f"{operation} failed, not supported by ccxt for this exchange: "
            f"{_first_line(exc)}; choose another exchange"
        ) from exc
    except ccxt.AuthenticationError as exc:
        raise ExchangeError(
            f"{operation} failed, the exchange rejected the credentials: "
            f"{_first_line(exc)}; check apiKey and secret in BTC_LSTM_CCXT_CONFIG"
        ) from exc
    except ccxt.BaseError as exc:
        raise ExchangeError(
            f"{operation} failed, the exchange rejected the request "
            f"({type(exc).__name__}): {_first_line(exc)}"
        ) from exc
    except (TypeError, ValueError) as exc:
        # ccxt uses option values as given, so a timeout of "30" fails here.
        raise ConfigError(
            f"{operation} failed inside ccxt: {exc}; check the value types in "
            "BTC_LSTM_CCXT_CONFIG"
        ) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def ohlcv_page_limit(exchange: ccxt.Exchange) -> int:
    """Return how many candles one `fetch_ohlcv` request returns at most.

    ccxt lists it in `exchange.features` (1000 for Binance, 720 for Kraken); an
    exchange without that entry gets DEFAULT_PAGE_LIMIT.
    """
    features = exchange.features or {}
    spot = features.get("spot") or {}
    limit = (spot.get("fetchOHLCV") or {}).get("limit")
    return int(limit) if limit else DEFAULT_PAGE_LIMIT


def fetch_closed_candles(
    exchange: ccxt.Exchange,
    series: Series,
    since_ms: int,
    now_ms: int,
    *,
    until_ms: int | None = None,
    anchor_offset_ms: int | None = None,
    page_limit: int | None = None,
    page_retries: int = PAGE_RETRIES,
    page_retry_delay_seconds: float = PAGE_RETRY_DELAY_SECONDS,
) -> pd.DataFrame:
    """Page through `fetch_ohlcv` from `since_ms` until the newest closed candle.

    A candle opening at `t` is closed once `t + timeframe <= now_ms`; the candle
    still open is never returned. Each page is sorted, because some exchanges put
    the newest candle first, and candles already received are dropped, because
    pages may overlap. A page with no candle at or after the request's start
    moves the start on by one page, so that a hole in the exchange's history does
    not end a backfill early. A page whose candles all lie beyond the end ends
    the paging. Every page advances the start by at least one candle, so the
    number of requests is at most the number of candles in the range plus one.

    Args:
        since_ms: open time of the first candle requested, Unix milliseconds.
        now_ms: the current time, Unix milliseconds.
        until_ms: open time of the last candle requested; None means the newest
            closed candle.
        anchor_offset_ms: where the series' candles open within a timeframe,
            when already known from stored candles; None takes it from the first
            candle received.
        page_limit: candles per request; None uses the exchange's maximum.
        page_retries: retries of one page after a temporary error, waiting
            `page_retry_delay_seconds`, then twice as long each time.

    Returns:
        A candle frame with `CANDLE_COLUMNS`, oldest first, possibly empty.

    Raises:
        MixedAnchorError: candles open at another time of day than
            `anchor_offset_ms` or than each other.
        ExchangeUnavailableError: a page still failed after its retries.
        ExchangeError, UnknownSymbolError: the exchange rejected the request.
    """
    timeframe_ms = series.timeframe_ms
    limit = page_limit or ohlcv_page_limit(exchange)
    last_expected_ms = now_ms - timeframe_ms
    if until_ms is not None:
        last_expected_ms = min(last_expected_ms, until_ms)
    max_requests = max(0, (last_expected_ms - since_ms) // timeframe_ms) + 1

    rows: dict[int, list[Any]] = {}
    cursor_ms = since_ms
    requests = 0
    while cursor_ms <= last_expected_ms and requests < max_requests:
        requests += 1
        page = _fetch_page(
            exchange,
            series,
            cursor_ms,
            limit,
            page_retries,
            page_retry_delay_seconds,
        )
        anchor_offset_ms = _check_anchor(page, series, anchor_offset_ms)
        new_rows = [row for row in page if cursor_ms <= row[0] <= last_expected_ms]
        logger.debug(
            "%s: page since %s returned %d candles, %d closed and new",
            series,
            ms_to_datetime(cursor_ms),
            len(page),
            len(new_rows),
        )
        if new_rows:
            for row in new_rows:
                rows.setdefault(row[0], row)
            cursor_ms = new_rows[-1][0] + timeframe_ms
        elif any(row[0] > last_expected_ms for row in page):
            break
        else:
            logger.info(
                "%s: no candles in the page from %s, moving on by %d candles",
                series,
                ms_to_datetime(cursor_ms),
                limit,
            )
            cursor_ms += limit * timeframe_ms

    _log_short_answer(series, since_ms, last_expected_ms, sorted(rows))
    return _candle_frame(list(rows.values()))


def _fetch_page(
    exchange: ccxt.Exchange,
    series: Series,
    since_ms: int,
    limit: int,
    retries: int,
    retry_delay_seconds: float,
) -> list[list[Any]]:
    """Return one page of candles, oldest first, retrying temporary errors."""
    operation = (
        f"{series}: fetch candles since {ms_to_datetime(since_ms):%Y-%m-%d %H:%M}"
    )
    for attempt in range(retries + 1):
        try:
            page = call_exchange(
                partial(
                    exchange.fetch_ohlcv,
                    series.symbol,
                    series.timeframe,
                    since=since_ms,
                    limit=limit,
                ),
                operation,
            )
            return sorted(
                _check_page(exchange, page, operation), key=lambda row: row[0]
            )
        except ExchangeUnavailableError as exc:
            if attempt == retries:
                raise
            delay_seconds = retry_delay_seconds * 2**attempt
            # The ccxt error, when there is one, without the advice to run again.
            reason = str(exc)
            if isinstance(exc.__cause__, Exception):
                cause = exc.__cause__
                reason = f"{operation} failed with {type(cause).__name__}: "
                reason += _first_line(cause)
            logger.warning(
                "%s; retry %d of %d in %.1f s",
                reason,
                attempt + 1,
                retries,
                delay_seconds,
            )
            time.sleep(delay_seconds)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _check_page(exchange: ccxt.Exchange, page: Any, operation: str) -> list[list[Any]]:
    """Return the page's rows, or raise when the response was not valid JSON.

    ccxt does not raise on a body that is not JSON: Kraken's parser then returns
    no candles and Binance's returns rows of None. The parsed JSON of the last
    response, None in that case, distinguishes both from a real empty page.
    """
    unparsed = (
        exchange.enableLastJsonResponse
        and exchange.last_json_response is None
        and bool(exchange.last_http_response)
    )
    malformed_rows = not isinstance(page, list) or any(
        not isinstance(row, list) or len(row) < 6 or not isinstance(row[0], int)
        for row in page
    )
    if unparsed or malformed_rows:
        body = str(exchange.last_http_response or "")[:80]
        raise ExchangeUnavailableError(
            f"{operation} failed, the exchange's response is not valid candle JSON: "
            f"{body!r}; run again later"
        )
    rows: list[list[Any]] = page
    return rows


def _check_anchor(
    page: list[list[Any]], series: Series, anchor_offset_ms: int | None
) -> int | None:
    """Return the series' anchor offset, taken from `page` when not known yet.

    Raises:
        MixedAnchorError: a candle opens at another offset than the others.
    """
    timeframe_ms = series.timeframe_ms
    for row in page:
        offset_ms = row[0] % timeframe_ms
        if anchor_offset_ms is None:
            anchor_offset_ms = offset_ms
        elif offset_ms != anchor_offset_ms:
            raise MixedAnchorError(
                f"{series}: candle at {ms_to_datetime(row[0]):%Y-%m-%d %H:%M} UTC "
                f"opens {_duration(offset_ms)} into its period, expected "
                f"{_duration(anchor_offset_ms)} like the series' other candles; "
                "store candles with another anchor (such as UTC+8 days) as their "
                "own series, on another exchange id or timeframe"
            )
    return anchor_offset_ms


def _duration(offset_ms: int) -> str:
    hours, rest_ms = divmod(offset_ms, 3_600_000)
    return f"{hours:02d}:{rest_ms // 60_000:02d}"


def _log_short_answer(
    series: Series, since_ms: int, last_expected_ms: int, open_times_ms: list[int]
) -> None:
    """Log when the exchange started later or stopped earlier than requested."""
    if not open_times_ms:
        return
    if open_times_ms[0] > since_ms:
        logger.info(
            "%s: exchange returned candles from %s on, requested from %s",
            series,
            ms_to_datetime(open_times_ms[0]),
            ms_to_datetime(since_ms),
        )
    if open_times_ms[-1] + series.timeframe_ms <= last_expected_ms:
        logger.warning(
            "%s: exchange returned no candles after %s, expected candles up to %s",
            series,
            ms_to_datetime(open_times_ms[-1]),
            ms_to_datetime(last_expected_ms),
        )


def _candle_frame(rows: list[list[Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([row[:6] for row in rows], columns=CANDLE_COLUMNS)
    frame["open_time"] = pd.to_datetime(
        frame["open_time"].astype("int64"), unit="ms", utc=True
    )
    for column in CANDLE_COLUMNS[1:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame = frame.sort_values("open_time").drop_duplicates("open_time", keep="last")
    return frame.reset_index(drop=True)
