"""ccxt access: create the exchange, check the market, page through closed candles."""

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import ccxt
import pandas as pd

from btc_lstm.candles import CANDLE_COLUMNS, Series, last_closed_open_ms, ms_to_datetime
from btc_lstm.errors import (
    ConfigError,
    ExchangeError,
    ExchangeUnavailableError,
    UnknownExchangeError,
    UnknownSymbolError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
        exchange: ccxt.Exchange = exchange_class(
            {"enableRateLimit": True, **ccxt_config}
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
        ExchangeUnavailableError: the exchange could not be reached.
        UnknownSymbolError: the exchange does not list the symbol.
        ExchangeError: the exchange has no OHLCV endpoint or lacks the timeframe.
    """
    markets = call_exchange(exchange.load_markets, f"{exchange.id}: load markets")
    if not exchange.has.get("fetchOHLCV"):
        raise ExchangeError(
            f"{exchange.id} offers no OHLCV candles through ccxt; choose another "
            "exchange"
        )
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

    ccxt's NetworkError covers timeouts, rate limits (DDoSProtection) and maintenance
    (ExchangeNotAvailable): those are worth a retry. Everything else is permanent.
    """
    try:
        return function()
    except ccxt.BadSymbol as exc:
        raise UnknownSymbolError(f"{operation} failed: {exc}") from exc
    except ccxt.NetworkError as exc:
        raise ExchangeUnavailableError(
            f"{operation} failed, exchange unreachable or busy: {_first_line(exc)}; "
            "check the network and the exchange's status, then run again"
        ) from exc
    except ccxt.BaseError as exc:
        raise ExchangeError(
            f"{operation} failed, the exchange rejected the request: {_first_line(exc)}"
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


def fetch_closed_candles(
    exchange: ccxt.Exchange,
    series: Series,
    since_ms: int,
    now_ms: int,
    page_limit: int | None = None,
) -> pd.DataFrame:
    """Page through `fetch_ohlcv` from `since_ms` until the newest closed candle.

    The candle that is still open at `now_ms` is never returned. Pages are merged,
    sorted and deduplicated by open time, because some exchanges return
    overlapping pages or put the newest candle first.

    Args:
        since_ms: open time of the first candle wanted, Unix milliseconds.
        now_ms: the current time, Unix milliseconds.
        page_limit: candles per request; None lets ccxt choose the exchange default.

    Returns:
        A candle frame with `CANDLE_COLUMNS`, oldest first, possibly empty.
    """
    timeframe_ms = series.timeframe_ms
    newest_closed_ms = last_closed_open_ms(now_ms, timeframe_ms)
    rows: list[list[Any]] = []
    cursor_ms = since_ms
    while cursor_ms <= newest_closed_ms:
        page = call_exchange(
            partial(
                exchange.fetch_ohlcv,
                series.symbol,
                series.timeframe,
                since=cursor_ms,
                limit=page_limit,
            ),
            f"{series}: fetch candles since {ms_to_datetime(cursor_ms):%Y-%m-%d %H:%M}",
        )
        closed = [row for row in page if cursor_ms <= row[0] <= newest_closed_ms]
        logger.debug(
            "%s: page since %s returned %d candles, %d closed and new",
            series,
            ms_to_datetime(cursor_ms),
            len(page),
            len(closed),
        )
        if not closed:
            break
        rows.extend(closed)
        cursor_ms = max(row[0] for row in closed) + timeframe_ms

    if cursor_ms <= newest_closed_ms and rows:
        logger.warning(
            "%s: exchange returned no candles after %s, expected candles up to %s",
            series,
            ms_to_datetime(cursor_ms - timeframe_ms),
            ms_to_datetime(newest_closed_ms),
        )
    return _candle_frame(rows)


def _candle_frame(rows: list[list[Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([row[:6] for row in rows], columns=CANDLE_COLUMNS)
    frame["open_time"] = pd.to_datetime(
        frame["open_time"].astype("int64"), unit="ms", utc=True
    )
    for column in CANDLE_COLUMNS[1:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame = frame.sort_values("open_time").drop_duplicates("open_time", keep="last")
    return frame.reset_index(drop=True)
