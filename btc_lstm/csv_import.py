"""Candle CSV files: CryptoDataDownload exports and plain OHLCV tables."""

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from btc_lstm.candles import (
    CANDLE_COLUMNS,
    Series,
    find_invalid_candles,
    is_unified_symbol,
    open_times_ms,
)
from btc_lstm.errors import CsvFormatError

logger = logging.getLogger(__name__)

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
    300_000: "5m",
    900_000: "15m",
    1_800_000: "30m",
    3_600_000: "1h",
    7_200_000: "2h",
    14_400_000: "4h",
    21_600_000: "6h",
    43_200_000: "12h",
    86_400_000: "1d",
}


@dataclass(frozen=True)
class CandleFile:
    """Candles read from one file, with the series they belong to."""

    series: Series
    candles: pd.DataFrame


def read_candle_csv(
    path: Path, exchange: str | None = None, symbol: str | None = None
) -> CandleFile:
    """Read and check every row of a candle CSV file.

    Two layouts are read. A CryptoDataDownload export has an optional first line
    with the site's address, then `Unix,Date,Symbol,Open,High,Low,Close,Volume
    <base>,Volume <quote>,...`, newest row first. A plain file has the columns
    `timestamp` (or `date`), `open`, `high`, `low`, `close`, `volume`. Unix times
    may be seconds, milliseconds or microseconds, and may vary from row to row.

    Args:
        exchange: ccxt id of the source exchange; by default taken from a file
            name such as Binance_BTCUSDT_d.csv.
        symbol: unified symbol; by default taken from the base-volume column.

    Raises:
        CsvFormatError: the file is missing, is not one of the layouts above, or a
            row is invalid; nothing is returned in part.
    """
    raw = _read_table(path)
    columns = {name.strip().lower(): name for name in raw.columns}
    if "unix" in columns:
        candles, inferred_symbol = _parse_cryptodatadownload(raw, columns, path)
    elif {"open", "high", "low", "close", "volume"} <= columns.keys() and (
        "timestamp" in columns or "date" in columns
    ):
        candles, inferred_symbol = _parse_plain(raw, columns, path), None
    else:
        raise CsvFormatError(
            f"{path}: not an OHLCV file, found columns {', '.join(raw.columns)}; "
            "expected a CryptoDataDownload export (Unix,Date,Symbol,Open,High,Low,"
            "Close,Volume ...) or timestamp,open,high,low,close,volume"
        )

    bad_times = candles["open_time"].isna()
    if bad_times.any():
        first = int(bad_times.to_numpy().argmax())
        raise CsvFormatError(
            f"{path}: {int(bad_times.sum())} rows have a timestamp that is not a "
            f"date, first data row {first + 1}; write dates as YYYY-MM-DD or "
            "ISO 8601 times"
        )
    if symbol is not None and not is_unified_symbol(symbol):
        raise CsvFormatError(
            f"invalid symbol {symbol!r}; write it as BASE/QUOTE, such as BTC/USDT"
        )
    if exchange is not None and not re.fullmatch(r"[a-z0-9]{1,64}", exchange):
        raise CsvFormatError(
            f"invalid exchange id {exchange!r}; use a ccxt id such as binance"
        )
    candles = candles.sort_values("open_time").reset_index(drop=True)
    timeframe = _infer_timeframe(candles, path)
    series = Series(
        exchange=exchange or _exchange_from_name(path),
        symbol=symbol or inferred_symbol or _missing_symbol(path),
        timeframe=timeframe,
    )
    candles = _drop_open_candle(candles, series, path)
    _check_rows(candles, series, path)
    return CandleFile(series=series, candles=candles)


def _drop_open_candle(
    candles: pd.DataFrame, series: Series, path: Path
) -> pd.DataFrame:
    """Drop the candle that has not closed yet; reject candles that open later."""
    now_ms = int(time.time() * 1000)
    opens_ms = open_times_ms(candles["open_time"])
    future = opens_ms > now_ms
    if future.any():
        first = candles.loc[future, "open_time"].iloc[0]
        raise CsvFormatError(
            f"{path}: {int(future.sum())} candles open in the future, first "
            f"{first:%Y-%m-%d %H:%M} UTC; remove them"
        )
    still_open = opens_ms + series.timeframe_ms > now_ms
    if still_open.any():
        # Exports made during the day end with that day's unfinished candle.
        logger.warning(
            "%s: skipped the candle of %s from %s, which has not closed yet",
            series,
            candles.loc[still_open, "open_time"].iloc[0],
            path.name,
        )
    return candles.loc[~still_open].reset_index(drop=True)


def _read_table(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise CsvFormatError(f"{path} is a folder; pass the path of a CSV file")
    if not path.is_file():
        raise CsvFormatError(f"candle file not found: {path}")
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            first_line = handle.readline()
        # CryptoDataDownload puts its address alone on the first line of some
        # exports.
        skip_rows = 1 if first_line.lower().startswith("http") else 0
        table = pd.read_csv(path, skiprows=skip_rows, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvFormatError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
            "file as a UTF-8 CSV and import it again"
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CsvFormatError(f"{path}: not a readable CSV file: {exc}") from exc
    except OSError as exc:
        raise CsvFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if table.empty:
        raise CsvFormatError(f"{path}: no candle rows found")

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
) -> tuple[pd.DataFrame, str | None]:
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
    return candles, symbol


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
        f"{first + 1}: {column.name} {column.iloc[first]!r} {problem}"
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


def _check_rows(candles: pd.DataFrame, series: Series, path: Path) -> None:
    duplicated = candles["open_time"].duplicated(keep=False)
    if duplicated.any():
        first = candles.loc[duplicated, "open_time"].iloc[0]
        raise CsvFormatError(
            f"{path}: {int(duplicated.sum())} rows share an open time, first "
            f"{first:%Y-%m-%d %H:%M}; remove the duplicates"
        )
    reasons = find_invalid_candles(candles, series.timeframe_ms)
    invalid = reasons != ""
    if invalid.any():
        first = candles.loc[invalid].iloc[0]
        raise CsvFormatError(
            f"{path}: {int(invalid.sum())} invalid candles, first at "
            f"{first['open_time']:%Y-%m-%d %H:%M}: {reasons[invalid].iloc[0]}; fix or "
            "remove those rows"
        )
