"""Candle CSV files: CryptoDataDownload exports, Binance public data dumps, Yahoo
Finance downloads and plain OHLCV tables.

Reading a file checks its layout, times and timeframe, which are problems of the
whole file. Row values are checked later, when the candles are stored, so that a
bad row is rejected on its own.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from btc_lstm.candles import (
    Series,
    is_unified_symbol,
    open_times_ms,
)
from btc_lstm.csv_layouts import (
    ACCEPTED_LAYOUTS,
    TIMEFRAME_BY_MS,
    ParsedFile,
    parse_binance,
    parse_cryptodatadownload,
    parse_plain,
    parse_yahoo,
)
from btc_lstm.errors import CsvFormatError


@dataclass(frozen=True)
class CandleFile:
    """Candles read from one file, with the series they belong to."""

    series: Series
    candles: pd.DataFrame


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
        CsvFormatError: the file is missing or unreadable, or is not one of the
            layouts above. Also raised when a time is not a date, when the file
            mixes timeframes, or when its exchange or symbol cannot be
            determined. Nothing is returned in part.
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


def _parse_file(path: Path) -> ParsedFile:
    """Detect the layout of a file and parse it with that layout's rules."""
    first_line = _read_first_line(path)
    # CryptoDataDownload puts its address alone on the first line of some exports.
    skip_rows = 1 if first_line.lower().startswith("http") else 0
    first_field = first_line.split(",", 1)[0].strip()
    if first_field.isascii() and first_field.isdigit():
        return parse_binance(_read_table(path, skip_rows, header=False), path)

    raw = _read_table(path, skip_rows, header=True)
    columns = {name.lower(): name for name in raw.columns}
    if "unix" in columns:
        return parse_cryptodatadownload(raw, columns, path)
    if {"open_time", "close_time"} <= columns.keys():
        # Binance's futures dumps carry a header row with these names.
        return parse_binance(raw, path)
    if "adj close" in columns and "date" in columns:
        return parse_yahoo(raw, columns, path)
    if {"open", "high", "low", "close", "volume"} <= columns.keys() and (
        "timestamp" in columns or "date" in columns
    ):
        return ParsedFile(parse_plain(raw, columns, path), exchange=None, symbol=None)
    raise CsvFormatError(
        f"{path}: not a candle file, found columns {', '.join(raw.columns)}; "
        f"expected {ACCEPTED_LAYOUTS}"
    )


def _read_first_line(path: Path) -> str:
    if path.is_dir():
        raise CsvFormatError(f"{path} is a folder; pass the path of a CSV file")
    if not path.is_file():
        raise CsvFormatError(f"candle file not found: {path}")
    if path.suffix.lower() == ".zip":
        raise CsvFormatError(
            f"{path} is a zip archive; unzip it and import the CSV file inside"
        )
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
        reason = str(exc).strip()
        raise CsvFormatError(f"{path}: not a readable CSV file: {reason}") from exc
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


def _infer_timeframe(candles: pd.DataFrame, path: Path) -> str:
    if len(candles) < 2:
        raise CsvFormatError(f"{path}: need at least two candles to tell the timeframe")
    # Repeated open times are reported by _check_times, with their first time.
    open_times = candles["open_time"].drop_duplicates().sort_values()
    if len(open_times) < 2:
        raise CsvFormatError(
            f"{path}: all {len(candles)} rows share the open time "
            f"{open_times.iloc[0]:%Y-%m-%d %H:%M}; remove the duplicates"
        )
    steps_seconds = open_times.diff().dropna().dt.total_seconds()
    step_ms = int(round(steps_seconds.mode().iloc[0] * 1000))
    if step_ms not in TIMEFRAME_BY_MS:
        raise CsvFormatError(
            f"{path}: unsupported timeframe, candles are {step_ms} ms apart; "
            "expected minutes, hours or days such as 1h, 4h or 1d"
        )
    return TIMEFRAME_BY_MS[step_ms]


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
