"""Ingest stage: bring closed candles from an exchange or a file into the store."""

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.candles import (
    Series,
    datetime_to_ms,
    find_invalid_candles,
    open_times_ms,
)
from btc_lstm.csv_import import read_candle_csv
from btc_lstm.exchange import check_market, create_exchange, fetch_closed_candles
from btc_lstm.store import latest_open_time, store_candles
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Counts and time range of one ingest of one series.

    `received` rows split into `inserted`, `updated`, `rejected` and unchanged
    rows. Rejected rows went to `rejected_candles` instead of `ohlcv`, and the
    time range covers the stored rows only.
    """

    exchange: str
    symbol: str
    timeframe: str
    received: int
    inserted: int
    updated: int
    rejected: int
    first_open_time: str | None
    last_open_time: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_from_exchange(
    engine: Engine,
    series: Series,
    history_start: dt.date,
    ccxt_config: dict[str, Any],
    now_ms: int | None = None,
) -> IngestResult:
    """Fetch the closed candles of `series` that are newer than the newest stored one.

    A series with nothing stored is backfilled from `history_start` (00:00 UTC). The
    candle still open at `now_ms` (default: the current time) is never stored.

    Raises:
        UnknownExchangeError, UnknownSymbolError, ExchangeError: permanent problems.
        ExchangeUnavailableError: the exchange could not be reached; worth a retry.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    exchange = create_exchange(series.exchange, ccxt_config)
    check_market(exchange, series)

    # A second run of the same series waits here, then fetches only what the
    # first one did not store.
    with series_lock(engine, series):
        return _fetch_and_store(engine, series, exchange, history_start, now_ms)


def _fetch_and_store(
    engine: Engine,
    series: Series,
    exchange: Any,
    history_start: dt.date,
    now_ms: int,
) -> IngestResult:
    newest_stored = latest_open_time(engine, series)
    if newest_stored is None:
        start = dt.datetime.combine(history_start, dt.time(), tzinfo=dt.UTC)
        since_ms = datetime_to_ms(start)
        logger.info("%s: nothing stored, backfilling from %s", series, history_start)
    else:
        since_ms = datetime_to_ms(newest_stored) + series.timeframe_ms

    candles = fetch_closed_candles(exchange, series, since_ms, now_ms)
    return _store(engine, series, candles, source=exchange.id, now_ms=now_ms)


def import_candle_file(
    engine: Engine,
    path: Path,
    exchange: str | None = None,
    symbol: str | None = None,
    now_ms: int | None = None,
) -> IngestResult:
    """Read a candle file and store all of its rows in one transaction.

    Rows that fail validation, including the candle that has not closed by
    `now_ms` (default: the current time), go to `rejected_candles`. The file is
    stored whole or not at all.

    Raises:
        CsvFormatError: the file is missing, is not in a layout that
            `read_candle_csv` reads, or has a time, timeframe or symbol problem;
            nothing is stored then.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    candle_file = read_candle_csv(path, exchange=exchange, symbol=symbol)
    with series_lock(engine, candle_file.series):
        return _store(
            engine,
            candle_file.series,
            candle_file.candles,
            source=path.name,
            now_ms=now_ms,
        )


def _store(
    engine: Engine, series: Series, candles: pd.DataFrame, source: str, now_ms: int
) -> IngestResult:
    reasons = _rejection_reasons(candles, series, now_ms)
    is_rejected = reasons != ""
    rejected = candles.loc[is_rejected].assign(reason=reasons[is_rejected])
    # An exchange may repeat a row, and the reject table keeps one row per open time.
    rejected = rejected.drop_duplicates("open_time", keep="last")
    accepted = candles.loc[~is_rejected]
    if not rejected.empty:
        first = rejected.iloc[0]
        logger.warning(
            "%s: rejected %d candles from %s, first at %s: %s",
            series,
            int(is_rejected.sum()),
            source,
            first["open_time"],
            first["reason"],
        )

    upserted = store_candles(engine, series, accepted, rejected, source)
    first_time, last_time = _time_range(accepted)
    if candles.empty:
        logger.info("%s: no new closed candles from %s", series, source)
    elif not accepted.empty:
        logger.info(
            "%s: stored %d new and %d revised candles from %s (%s..%s)",
            series,
            upserted.inserted,
            upserted.updated,
            source,
            first_time,
            last_time,
        )
    return IngestResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        received=len(candles),
        inserted=upserted.inserted,
        updated=upserted.updated,
        rejected=int(is_rejected.sum()),
        first_open_time=first_time,
        last_open_time=last_time,
    )


def _rejection_reasons(candles: pd.DataFrame, series: Series, now_ms: int) -> pd.Series:
    """Return a reason per row that must not be stored, empty for valid rows."""
    reasons = find_invalid_candles(candles, series.timeframe_ms)
    close_ms = open_times_ms(candles["open_time"]) + series.timeframe_ms
    # A candle whose close is after the ingest is still open, or in the future.
    not_closed = (close_ms > now_ms) & (reasons == "")
    reasons[not_closed] = "not closed at the ingest time"
    return reasons


def _time_range(candles: pd.DataFrame) -> tuple[str | None, str | None]:
    if candles.empty:
        return None, None
    return (
        candles["open_time"].min().isoformat(),
        candles["open_time"].max().isoformat(),
    )
