"""Candle series, timeframes in ccxt notation, the closed-candle rule and row checks."""

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_lstm.errors import ConfigError

_UNIT_MS = {
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}


def timeframe_to_ms(timeframe: str) -> int:
    """Return the length of one candle of `timeframe` (such as "1d" or "4h") in ms.

    Raises:
        ConfigError: the timeframe is not a count followed by m, h or d, or is
            longer than one day. Longer candles are rejected because exchanges
            open them on a Monday, on the first of the month or at other times
            that the epoch-aligned closed-candle rule does not model.
    """
    count, unit = timeframe[:-1], timeframe[-1:]
    valid = count.isascii() and count.isdigit() and unit in _UNIT_MS
    if not valid or not 0 < int(count) * _UNIT_MS.get(unit, 0) <= _UNIT_MS["d"]:
        raise ConfigError(
            f"invalid timeframe {timeframe!r}; use a count and a unit of m, h or d, "
            "at most one day long, such as 1d, 4h or 1h"
        )
    return int(count) * _UNIT_MS[unit]


def last_closed_open_ms(
    now_ms: int, timeframe_ms: int, anchor_offset_ms: int = 0
) -> int:
    """Return the open time (ms) of the newest candle that has closed by `now_ms`.

    Candles open at `anchor_offset_ms` past a multiple of their length since the
    Unix epoch: offset 0 puts daily candles at 00:00 UTC, and an offset of 16 hours
    puts them at 16:00 UTC, the midnight of UTC+8. The candle opening at `t`
    closes at `t + timeframe_ms`.
    """
    current_open_ms = now_ms - (now_ms - anchor_offset_ms) % timeframe_ms
    return current_open_ms - timeframe_ms


def schedule_cron(timeframe: str) -> str:
    """Return a cron expression, in UTC, that runs shortly after each candle closes.

    Daily and hourly candles are fetched five minutes after they close, and
    minute candles one minute after, to let the exchange finalize them.

    Raises:
        ConfigError: the candles do not divide an hour or a day evenly, so no
            cron expression follows their closes.
    """
    length_minutes = timeframe_to_ms(timeframe) // 60_000
    if length_minutes == 1440:
        return "5 0 * * *"
    if length_minutes % 60 == 0 and 24 % (length_minutes // 60) == 0:
        hours = length_minutes // 60
        return "5 * * * *" if hours == 1 else f"5 */{hours} * * *"
    if length_minutes == 1:
        return "* * * * *"
    if length_minutes < 60 and 60 % length_minutes == 0:
        return f"1-59/{length_minutes} * * * *"
    raise ConfigError(
        f"no schedule for timeframe {timeframe!r}: its candles do not divide an "
        "hour or a day evenly; use 1m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 12h or 1d"
    )


def ms_to_datetime(timestamp_ms: int) -> dt.datetime:
    """Return the timezone-aware UTC datetime of a Unix time in milliseconds."""
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, tz=dt.UTC)


def datetime_to_ms(moment: dt.datetime) -> int:
    """Return the Unix time in milliseconds of an aware datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def open_times_ms(open_times: pd.Series) -> pd.Series:
    """Return tz-aware UTC open times as int64 Unix milliseconds."""
    epoch = pd.Timestamp(0, tz="UTC")
    return ((open_times - epoch) // pd.Timedelta(1, "ms")).astype("int64")


_SYMBOL_PATTERN = re.compile(
    r"^[A-Za-z0-9.\-_]+/[A-Za-z0-9.\-_]+(:[A-Za-z0-9.\-_]+)?$", re.ASCII
)


def is_unified_symbol(symbol: str) -> bool:
    """Return whether `symbol` is a ccxt unified symbol such as BTC/USDT, at most
    64 characters long, the width of the symbol columns."""
    return len(symbol) <= 64 and _SYMBOL_PATTERN.match(symbol) is not None


@dataclass(frozen=True)
class Series:
    """One candle series: an exchange, a unified symbol and a timeframe."""

    exchange: str
    symbol: str
    timeframe: str

    @property
    def timeframe_ms(self) -> int:
        return timeframe_to_ms(self.timeframe)

    def __str__(self) -> str:
        return f"{self.exchange} {self.symbol} {self.timeframe}"


# Columns of a candle frame as passed between ingest, store and train: one row per
# closed candle, open_time as tz-aware UTC, sorted by open_time with no duplicates.
CANDLE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]


def find_invalid_candles(
    candles: pd.DataFrame, timeframe_ms: int, anchor_offset_ms: int | None = None
) -> pd.Series:
    """Return a reason per invalid row of a candle frame, empty where the row is valid.

    A row is invalid when a price or the volume is missing or not finite, when a
    price is not positive, or when the volume is negative. It is also invalid when
    the high is below another price, the low is above one, or the open time is not
    `anchor_offset_ms` past a multiple of the timeframe since the epoch.

    Args:
        anchor_offset_ms: where the series' candles open within a timeframe, such
            as 57_600_000 for daily candles at 16:00 UTC. None takes the offset
            that most rows share, so rows at another time of day are invalid.
    """
    reasons = pd.Series("", index=candles.index, dtype="object")
    offsets_ms = open_times_ms(candles["open_time"]) % timeframe_ms
    if anchor_offset_ms is None:
        anchor_offset_ms = int(offsets_ms.mode().min()) if len(offsets_ms) else 0
    values = candles[PRICE_COLUMNS + ["volume"]].astype("float64")
    checks = [
        (~np.isfinite(values).all(axis=1), "missing or non-finite value"),
        ((values[PRICE_COLUMNS] <= 0).any(axis=1), "price not positive"),
        (values["volume"] < 0, "negative volume"),
        (
            values["high"] < values[["open", "close", "low"]].max(axis=1),
            "high below open, close or low",
        ),
        (
            values["low"] > values[["open", "close", "high"]].min(axis=1),
            "low above open, close or high",
        ),
        (
            offsets_ms != anchor_offset_ms,
            "open time not aligned to the series' other candles",
        ),
    ]
    for failed, reason in checks:
        failed_rows = pd.Series(failed, index=candles.index, dtype=bool)
        reasons[(reasons == "") & failed_rows] = reason
    return reasons
