"""The layouts of candle files that `btc_lstm.csv_import` reads, one parser each.

Each parser turns a table into a candle frame, with the exchange, symbol and
timeframe that the layout determines, where it determines them.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from btc_lstm.candles import CANDLE_COLUMNS, open_times_ms
from btc_lstm.errors import CsvFormatError

# Unix times above these are in nanoseconds, microseconds or milliseconds, and
# below them in seconds. Binance moved its spot data to microseconds in 2025, and
# exports pass those 16-digit values through.
_NANOSECONDS_FROM = 10**17
_MICROSECONDS_FROM = 10**14
_MILLISECONDS_FROM = 10**11
# 2009-01-03 00:00 UTC, the day of Bitcoin's first block: no candle is older.
_EARLIEST_MS = 1_230_940_800_000

TIMEFRAME_BY_MS = {
    60_000: "1m",
    180_000: "3m",
    300_000: "5m",
    900_000: "15m",
    1_800_000: "30m",
    3_600_000: "1h",
    7_200_000: "2h",
    14_400_000: "4h",
    21_600_000: "6h",
    28_800_000: "8h",
    43_200_000: "12h",
    86_400_000: "1d",
}
TIMEFRAME_MS_BY_NAME = {name: ms for ms, name in TIMEFRAME_BY_MS.items()}


ACCEPTED_LAYOUTS = (
    "a CryptoDataDownload export (Unix,Date,Symbol,Open,High,Low,Close,Volume "
    "<base>,...), a Binance public data dump (12 columns without a header, named "
    "like BTCUSDT-1d-2025-01.csv), a Yahoo Finance download (Date,Open,High,Low,"
    "Close,Adj Close,Volume) or timestamp|date,open,high,low,close,volume"
)


@dataclass(frozen=True)
class ParsedFile:
    """Candles of one layout, with the parts of their series the layout determines."""

    candles: pd.DataFrame
    exchange: str | None
    symbol: str | None
    timeframe: str | None = None


def parse_cryptodatadownload(
    raw: pd.DataFrame, columns: dict[str, str], path: Path
) -> ParsedFile:
    """Parse a CryptoDataDownload export; the symbol comes from its columns.

    Raises:
        CsvFormatError: a price or volume column is missing, or the rows belong
            to several symbols.
    """
    volume_columns = [
        name for name in raw.columns if name.lower().startswith("volume ")
    ]
    missing = [name for name in ("open", "high", "low", "close") if name not in columns]
    if missing or not volume_columns:
        raise CsvFormatError(
            f"{path}: CryptoDataDownload export without columns "
            f"{', '.join(missing + ([] if volume_columns else ['Volume <base>']))}"
        )
    base = volume_columns[0].split(" ", 1)[1].strip().upper()
    symbol = None
    if "symbol" in columns:
        ids = raw[columns["symbol"]].dropna().astype(str).unique()
        if len(ids) > 1:
            raise CsvFormatError(
                f"{path}: rows of several symbols ({', '.join(ids[:5])}); "
                "split the file by symbol"
            )
        if len(ids) == 1:
            symbol = _unified_symbol(ids[0], base, volume_columns)
    candles = pd.DataFrame(
        {
            "open_time": parse_unix_times(raw[columns["unix"]], path),
            "open": _numbers(raw[columns["open"]]),
            "high": _numbers(raw[columns["high"]]),
            "low": _numbers(raw[columns["low"]]),
            "close": _numbers(raw[columns["close"]]),
            "volume": _numbers(raw[volume_columns[0]]),
        }
    )
    return ParsedFile(candles, exchange=None, symbol=symbol)


def _unified_symbol(market_id: str, base: str, volume_columns: list[str]) -> str | None:
    # "BTCUSDT" with a "Volume BTC" column: the quote is what follows the base, and
    # the second volume column ("Volume USDT") confirms it where present.
    market_id = market_id.replace("/", "").replace("-", "").upper()
    if not market_id.startswith(base) or len(market_id) == len(base):
        return None
    quote = market_id[len(base) :]
    if len(volume_columns) > 1 and volume_columns[1].split(" ", 1)[1].upper() != quote:
        return None
    return f"{base}/{quote}"


def parse_plain(raw: pd.DataFrame, columns: dict[str, str], path: Path) -> pd.DataFrame:
    """Return the candles of a table with timestamp or date and OHLCV columns."""
    if "timestamp" in columns:
        times = raw[columns["timestamp"]]
        numeric = pd.to_numeric(times, errors="coerce")
        if numeric.notna().all():
            open_time = parse_unix_times(times, path)
        else:
            open_time = pd.to_datetime(
                times, utc=True, errors="coerce", format="ISO8601"
            )
    else:
        open_time = pd.to_datetime(
            raw[columns["date"]], utc=True, errors="coerce", format="ISO8601"
        )
    return pd.DataFrame(
        {
            "open_time": open_time,
            **{name: _numbers(raw[columns[name]]) for name in CANDLE_COLUMNS[1:]},
        }
    )


def _numbers(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype("float64")


def parse_unix_times(column: pd.Series, path: Path) -> pd.Series:
    """Return Unix times of any unit from seconds to nanoseconds as UTC times.

    Raises:
        CsvFormatError: a time is not a whole number, or falls before 2009 or
            more than a day after the current time.
    """
    # Floats hold every magnitude without the wrap-around of int64 overflow, and
    # are exact for whole milliseconds up to 2**53, far beyond any valid time.
    values = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
    _reject_rows(~np.isfinite(values), column, path, "is not a number")
    _reject_rows(values % 1 != 0, column, path, "is not a whole number")
    milliseconds = np.select(
        [
            values >= _NANOSECONDS_FROM,
            values >= _MICROSECONDS_FROM,
            values >= _MILLISECONDS_FROM,
        ],
        [values // 1_000_000, values // 1000, values],
        default=values * 1000,
    )
    latest_ms = time.time() * 1000 + 86_400_000
    out_of_range = (milliseconds < _EARLIEST_MS) | (milliseconds > latest_ms)
    _reject_rows(
        out_of_range, column, path, "is before 2009 or in the future, so not a candle"
    )
    return pd.Series(
        pd.to_datetime(milliseconds.astype("int64"), unit="ms", utc=True),
        index=column.index,
    )


def _reject_rows(
    invalid: np.ndarray, column: pd.Series, path: Path, problem: str
) -> None:
    if not invalid.any():
        return
    first = int(invalid.argmax())
    raise CsvFormatError(
        f"{path}: {int(invalid.sum())} rows with an invalid time, first data row "
        f"{first + 1}: {column.name} {str(column.iloc[first])!r} {problem}"
    )


# Binance public data: https://github.com/binance/binance-public-data
_BINANCE_DUMP_NAME = re.compile(
    r"(?P<market>[A-Z0-9]+)-(?P<interval>\d+[smhdw]|1mo)-\d{4}-\d{2}(-\d{2})?\.csv"
)
_BINANCE_COLUMN_NAMES = [
    *CANDLE_COLUMNS,
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base_volume",
    "taker_buy_quote_volume",
    "ignore",
]
_BINANCE_COLUMNS = len(_BINANCE_COLUMN_NAMES)
# Common quote assets of Binance spot markets, longest first so that BTCTUSD splits
# into BTC/TUSD rather than BTCT/USD. Rare quotes that end like a common one (AEUR
# and EUR) are left out, so ADAEUR stays ADA/EUR. Other markets need --symbol.
_BINANCE_QUOTES = sorted(
    [
        *["USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "USD", "DAI"],
        *["BTC", "ETH", "BNB", "EUR", "GBP", "TRY", "BRL", "AUD", "JPY", "RUB"],
        *["UAH", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "NGN"],
    ],
    key=len,
    reverse=True,
)


def parse_binance(raw: pd.DataFrame, path: Path) -> ParsedFile:
    """Parse a Binance kline dump, with or without its header row.

    Raises:
        CsvFormatError: the table does not have 12 columns, the interval in the
            file name is longer than a day, or a row's close time does not end a
            candle of that interval.
    """
    if len(raw.columns) != _BINANCE_COLUMNS:
        raise CsvFormatError(
            f"{path}: {len(raw.columns)} columns without a header; a Binance "
            f"public data dump has {_BINANCE_COLUMNS}, and other files need a "
            f"header row. Expected {ACCEPTED_LAYOUTS}"
        )
    raw = raw.set_axis(_BINANCE_COLUMN_NAMES, axis="columns")
    candles = pd.DataFrame(
        {
            "open_time": parse_unix_times(raw["open_time"], path),
            **{name: _numbers(raw[name]) for name in CANDLE_COLUMNS[1:]},
        }
    )
    close_ms = open_times_ms(parse_unix_times(raw["close_time"], path)) + 1
    spans_ms = close_ms - open_times_ms(candles["open_time"])

    match = _BINANCE_DUMP_NAME.fullmatch(path.name)
    if match is not None:
        timeframe = _binance_timeframe(match["interval"], path)
    else:
        span_ms = int(spans_ms.mode().iloc[0])
        timeframe = TIMEFRAME_BY_MS.get(span_ms, "")
        if not timeframe:
            raise CsvFormatError(
                f"{path}: unsupported timeframe, candles last {span_ms} ms; "
                "expected minutes, hours or days such as 1h, 4h or 1d"
            )
    _check_spans(spans_ms, timeframe, path)
    symbol = _split_binance_market(match["market"]) if match is not None else None
    return ParsedFile(candles, exchange="binance", symbol=symbol, timeframe=timeframe)


def _binance_timeframe(interval: str, path: Path) -> str:
    if interval == "1mo" or TIMEFRAME_MS_BY_NAME.get(interval) is None:
        raise CsvFormatError(
            f"{path}: unsupported Binance interval {interval!r} in the file name; "
            "import candles of one minute to one day, such as 1h, 4h or 1d"
        )
    return interval


def _check_spans(spans_ms: pd.Series, timeframe: str, path: Path) -> None:
    """Reject rows whose close time does not end a candle of `timeframe`."""
    wrong = (spans_ms != TIMEFRAME_MS_BY_NAME[timeframe]).to_numpy()
    if wrong.any():
        first = int(wrong.argmax())
        raise CsvFormatError(
            f"{path}: {int(wrong.sum())} rows do not span one {timeframe} candle "
            f"from open time to close time, first data row {first + 1} spans "
            f"{int(spans_ms.iloc[first])} ms; the file mixes timeframes, so split "
            "it into one file per timeframe"
        )


def _split_binance_market(market_id: str) -> str | None:
    for quote in _BINANCE_QUOTES:
        if market_id.endswith(quote) and len(market_id) > len(quote):
            return f"{market_id[: -len(quote)]}/{quote}"
    return None


_YAHOO_NAME = re.compile(r"(?P<base>[A-Za-z0-9]+)-(?P<quote>[A-Za-z]+)\.csv")


def parse_yahoo(raw: pd.DataFrame, columns: dict[str, str], path: Path) -> ParsedFile:
    """Parse a Yahoo Finance download; `null` values become NaN and are rejected."""
    open_time = pd.to_datetime(
        raw[columns["date"]], utc=True, errors="coerce", format="ISO8601"
    )
    candles = pd.DataFrame(
        {
            "open_time": open_time,
            # NOTE: Yahoo's volume of a crypto pair is in the quote currency (USD
            # for BTC-USD), not in the base currency as elsewhere in ohlcv.
            **{name: _numbers(raw[columns[name]]) for name in CANDLE_COLUMNS[1:]},
        }
    )
    match = _YAHOO_NAME.fullmatch(path.name)
    symbol = None
    if match is not None:
        symbol = f"{match['base'].upper()}/{match['quote'].upper()}"
    return ParsedFile(candles, exchange="yahoo", symbol=symbol)
