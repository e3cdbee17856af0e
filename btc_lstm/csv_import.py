"""Candle CSV files: CryptoDataDownload exports, Binance public data dumps, Yahoo
Finance downloads and plain OHLCV tables.

Reading a file checks its layout, times and timeframe, which are problems of the
whole file. Row values are checked later, when the candles are stored, so that a
bad row is rejected on its own.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from btc_lstm.candles import (
    CANDLE_COLUMNS,
    Series,
    is_unified_symbol,
    open_times_ms,
)
from btc_lstm.errors import CsvFormatError

# Unix times above these are in nanoseconds, microseconds or milliseconds, and
# below them in seconds. Binance moved its spot data to microseconds in 2025, and
# exports pass those 16-digit values through.
_NANOSECONDS_FROM = 10**17
_MICROSECONDS_FROM = 10**14
_MILLISECONDS_FROM = 10**11
# 2009-01-03 00:00 UTC, the day of Bitcoin's first block: no candle is older.
_EARLIEST_MS = 1_230_940_800_000

_TIMEFRAME_BY_MS = {
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
_TIMEFRAME_MS_BY_NAME = {name: ms for ms, name in _TIMEFRAME_BY_MS.items()}


ACCEPTED_LAYOUTS = (
    "a CryptoDataDownload export (Unix,Date,Symbol,Open,High,Low,Close,Volume "
    "<base>,...), a Binance public data dump (12 columns without a header, named "
    "like BTCUSDT-1d-2025-01.csv), a Yahoo Finance download (Date,Open,High,Low,"
    "Close,Adj Close,Volume) or timestamp|date,open,high,low,close,volume"
)


@dataclass(frozen=True)
class CandleFile:
    """Candles read from one file, with the series they belong to."""

    series: Series
    candles: pd.DataFrame


@dataclass(frozen=True)
class _Parsed:
    """Candles of one layout, with what the layout tells about their series."""

    candles: pd.DataFrame
    exchange: str | None
    symbol: str | None
    timeframe: str | None = None


def read_candle_csv(
    path: Path, exchange: str | None = None, symbol: str | None = None
) -> CandleFile:
    """Read a candle file and check its layout, times and timeframe.

    Four layouts are read:

    - A CryptoDataDownload export: an optional first line with the site's
      address, then `Unix,Date,Symbol,Open,High,Low,Close,Volume <base>,Volume
      <quote>,...`, newest row first. The exchange comes from a file name such as
      Binance_BTCUSDT_d.csv and the symbol from the `Symbol` column.
    - A Binance public data dump such as BTCUSDT-1d-2025-01.csv: no header and 12
      columns (open time, open, high, low, close, volume, close time, quote
      volume, trades, taker buy base volume, taker buy quote volume, ignore). The
      symbol and timeframe come from the file name, the exchange is binance.
    - A Yahoo Finance download: `Date,Open,High,Low,Close,Adj Close,Volume`, one
      row per day, with `null` values on days without data. The symbol comes from
      a file name such as BTC-USD.csv, the exchange is yahoo.
    - A plain table with the columns `timestamp` (or `date`), `open`, `high`,
      `low`, `close`, `volume`.

    Unix times may be seconds, milliseconds or microseconds, and may vary from row
    to row. Row values (prices, volume, alignment, whether the candle has closed)
    are not checked here: `btc_lstm.ingest` rejects bad rows one by one.

    Args:
        exchange: exchange id of the source; by default taken from the layout or
            the file name.
        symbol: unified symbol; by default taken from the file.

    Returns:
        The series and its candles, oldest first, with unique open times.

    Raises:
        CsvFormatError: the file is missing or unreadable, is not one of the
            layouts above, has a time that is not a date, mixes timeframes, or
            its exchange or symbol cannot be told; nothing is returned in part.
    """
    _check_overrides(exchange, symbol)
    parsed = _parse_file(path)

    bad_times = parsed.candles["open_time"].isna()
    if bad_times.any():
        first = int(bad_times.to_numpy().argmax())
        raise CsvFormatError(
            f"{path}: {int(bad_times.sum())} rows have a timestamp that is not a "
            f"date, first data row {first + 1}; write dates as YYYY-MM-DD or "
            "ISO 8601 times"
        )
    candles = parsed.candles.sort_values("open_time").reset_index(drop=True)
    timeframe = parsed.timeframe or _infer_timeframe(candles, path)
    series = Series(
        exchange=exchange or parsed.exchange or _exchange_from_name(path),
        symbol=symbol or parsed.symbol or _missing_symbol(path),
        timeframe=timeframe,
    )
    _check_times(candles, series, path)
    return CandleFile(series=series, candles=candles)


def _check_overrides(exchange: str | None, symbol: str | None) -> None:
    if symbol is not None and not is_unified_symbol(symbol):
        raise CsvFormatError(
            f"invalid symbol {symbol!r}; write it as BASE/QUOTE, such as BTC/USDT"
        )
    if exchange is not None and not re.fullmatch(r"[a-z0-9]{1,64}", exchange):
        raise CsvFormatError(
            f"invalid exchange id {exchange!r}; use a ccxt id such as binance"
        )


def _parse_file(path: Path) -> _Parsed:
    """Detect the layout of a file and parse it with that layout's rules."""
    first_line = _read_first_line(path)
    # CryptoDataDownload puts its address alone on the first line of some exports.
    skip_rows = 1 if first_line.lower().startswith("http") else 0
    first_field = first_line.split(",", 1)[0].strip()
    if first_field.isascii() and first_field.isdigit():
        return _parse_binance(_read_table(path, skip_rows, header=False), path)

    raw = _read_table(path, skip_rows, header=True)
    columns = {name.lower(): name for name in raw.columns}
    if "unix" in columns:
        return _parse_cryptodatadownload(raw, columns, path)
    if {"open_time", "close_time"} <= columns.keys():
        # Binance's futures dumps carry a header row with these names.
        return _parse_binance(raw, path)
    if "adj close" in columns and "date" in columns:
        return _parse_yahoo(raw, columns, path)
    if {"open", "high", "low", "close", "volume"} <= columns.keys() and (
        "timestamp" in columns or "date" in columns
    ):
        return _Parsed(_parse_plain(raw, columns, path), exchange=None, symbol=None)
    raise CsvFormatError(
        f"{path}: not a candle file, found columns {', '.join(raw.columns)}; "
        f"expected {ACCEPTED_LAYOUTS}"
    )


def _read_first_line(path: Path) -> str:
    if path.is_dir():
        raise CsvFormatError(f"{path} is a folder; pass the path of a CSV file")
    if not path.is_file():
        raise CsvFormatError(f"candle file not found: {path}")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            return handle.readline()
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc
    except OSError as exc:
        raise CsvFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> CsvFormatError:
    return CsvFormatError(
        f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
        "file as a UTF-8 CSV and import it again"
    )


def _read_table(path: Path, skip_rows: int, header: bool) -> pd.DataFrame:
    try:
        table = pd.read_csv(
            path,
            skiprows=skip_rows,
            header=0 if header else None,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CsvFormatError(f"{path}: not a readable CSV file: {exc}") from exc
    except OSError as exc:
        raise CsvFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if table.empty:
        raise CsvFormatError(f"{path}: no candle rows found")
    if not header:
        return table

    table.columns = [str(name).strip() for name in table.columns]
    lowered = [name.lower() for name in table.columns]
    repeated = sorted({name for name in lowered if lowered.count(name) > 1})
    if repeated:
        raise CsvFormatError(
            f"{path}: the columns {', '.join(repeated)} appear more than once "
            "(names are compared without case); keep one of each"
        )
    if len(table.columns) == 1 and any(mark in table.columns[0] for mark in ";\t|"):
        raise CsvFormatError(
            f"{path}: found one column {table.columns[0]!r}; separate the columns "
            "with commas"
        )
    return table


def _parse_cryptodatadownload(
    raw: pd.DataFrame, columns: dict[str, str], path: Path
) -> _Parsed:
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
            "open_time": _parse_unix_times(raw[columns["unix"]], path),
            "open": _numbers(raw[columns["open"]]),
            "high": _numbers(raw[columns["high"]]),
            "low": _numbers(raw[columns["low"]]),
            "close": _numbers(raw[columns["close"]]),
            "volume": _numbers(raw[volume_columns[0]]),
        }
    )
    return _Parsed(candles, exchange=None, symbol=symbol)


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


def _parse_plain(
    raw: pd.DataFrame, columns: dict[str, str], path: Path
) -> pd.DataFrame:
    if "timestamp" in columns:
        times = raw[columns["timestamp"]]
        numeric = pd.to_numeric(times, errors="coerce")
        if numeric.notna().all():
            open_time = _parse_unix_times(times, path)
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


def _parse_unix_times(column: pd.Series, path: Path) -> pd.Series:
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


def _infer_timeframe(candles: pd.DataFrame, path: Path) -> str:
    if len(candles) < 2:
        raise CsvFormatError(f"{path}: need at least two candles to tell the timeframe")
    steps_seconds = candles["open_time"].diff().dropna().dt.total_seconds()
    step_ms = int(round(steps_seconds.mode().iloc[0] * 1000))
    if step_ms not in _TIMEFRAME_BY_MS:
        raise CsvFormatError(
            f"{path}: unsupported timeframe, candles are {step_ms} ms apart; "
            "expected minutes, hours or days such as 1h, 4h or 1d"
        )
    return _TIMEFRAME_BY_MS[step_ms]


def _exchange_from_name(path: Path) -> str:
    match = re.match(r"([A-Za-z]+)_", path.name)
    if match is None:
        raise CsvFormatError(
            f"{path}: cannot tell the exchange from the file name; name the file "
            "like Binance_BTCUSDT_d.csv, or import it with `btc-lstm import-csv "
            "--exchange ID`"
        )
    return match.group(1).lower()


def _missing_symbol(path: Path) -> str:
    raise CsvFormatError(
        f"{path}: cannot tell the symbol from the file; import it with "
        "`btc-lstm import-csv --symbol BASE/QUOTE`"
    )


def _check_times(candles: pd.DataFrame, series: Series, path: Path) -> None:
    """Reject repeated open times and rows of another timeframe in one file."""
    duplicated = candles["open_time"].duplicated(keep=False)
    if duplicated.any():
        first = candles.loc[duplicated, "open_time"].iloc[0]
        raise CsvFormatError(
            f"{path}: {int(duplicated.sum())} rows share an open time, first "
            f"{first:%Y-%m-%d %H:%M}; remove the duplicates"
        )
    # Two rows inside one candle period mean shorter candles among the longer
    # ones. A lone row off the period boundary is rejected as unaligned instead.
    periods = open_times_ms(candles["open_time"]) // series.timeframe_ms
    shared = periods.duplicated(keep=False)
    if shared.any():
        first = candles.loc[shared, "open_time"].iloc[0]
        raise CsvFormatError(
            f"{path}: {int(shared.sum())} rows open within one {series.timeframe} "
            f"candle, first at {first:%Y-%m-%d %H:%M}; the file mixes timeframes, "
            "so split it into one file per timeframe"
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


def _parse_binance(raw: pd.DataFrame, path: Path) -> _Parsed:
    """Parse a Binance kline dump, with or without its header row."""
    if len(raw.columns) != _BINANCE_COLUMNS:
        raise CsvFormatError(
            f"{path}: {len(raw.columns)} columns without a header; a Binance "
            f"public data dump has {_BINANCE_COLUMNS}, and other files need a "
            f"header row. Expected {ACCEPTED_LAYOUTS}"
        )
    raw = raw.set_axis(_BINANCE_COLUMN_NAMES, axis="columns")
    candles = pd.DataFrame(
        {
            "open_time": _parse_unix_times(raw["open_time"], path),
            **{name: _numbers(raw[name]) for name in CANDLE_COLUMNS[1:]},
        }
    )
    close_ms = open_times_ms(_parse_unix_times(raw["close_time"], path)) + 1
    spans_ms = close_ms - open_times_ms(candles["open_time"])

    match = _BINANCE_DUMP_NAME.fullmatch(path.name)
    if match is not None:
        timeframe = _binance_timeframe(match["interval"], path)
    else:
        timeframe = _TIMEFRAME_BY_MS.get(int(spans_ms.mode().iloc[0]), "")
        if not timeframe:
            raise CsvFormatError(
                f"{path}: unsupported timeframe, candles last {spans_ms.iloc[0]} ms; "
                "expected minutes, hours or days such as 1h, 4h or 1d"
            )
    _check_spans(spans_ms, timeframe, path)
    symbol = _split_binance_market(match["market"]) if match is not None else None
    return _Parsed(candles, exchange="binance", symbol=symbol, timeframe=timeframe)


def _binance_timeframe(interval: str, path: Path) -> str:
    if interval == "1mo" or _TIMEFRAME_MS_BY_NAME.get(interval) is None:
        raise CsvFormatError(
            f"{path}: unsupported Binance interval {interval!r} in the file name; "
            "import candles of one minute to one day, such as 1h, 4h or 1d"
        )
    return interval


def _check_spans(spans_ms: pd.Series, timeframe: str, path: Path) -> None:
    """Reject rows whose close time does not end a candle of `timeframe`."""
    wrong = (spans_ms != _TIMEFRAME_MS_BY_NAME[timeframe]).to_numpy()
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


def _parse_yahoo(raw: pd.DataFrame, columns: dict[str, str], path: Path) -> _Parsed:
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
    return _Parsed(candles, exchange="yahoo", symbol=symbol)
