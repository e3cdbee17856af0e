"""Ingest stage: bring closed candles from an exchange or a file into the store."""

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.candles import Series, datetime_to_ms, find_invalid_candles
from btc_lstm.csv_import import read_candle_csv
from btc_lstm.exchange import check_market, create_exchange, fetch_closed_candles
from btc_lstm.store import latest_open_time, upsert_candles
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Counts and time range of one ingest of one series."""

    exchange: str
    symbol: str
    timeframe: str
    received: int
    inserted: int
    updated: int
    invalid: int
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
    return _store(engine, series, candles, source=exchange.id)


def import_candle_file(
    engine: Engine,
    path: Path,
    exchange: str | None = None,
    symbol: str | None = None,
) -> IngestResult:
    """Read a candle CSV file and store all of its rows in one transaction.

    Raises:
        CsvFormatError: the file is not a candle file or has an invalid row; nothing
            is stored then.
    """
    candle_file = read_candle_csv(path, exchange=exchange, symbol=symbol)
    with series_lock(engine, candle_file.series):
        return _store(engine, candle_file.series, candle_file.candles, source=path.name)


def _store(
    engine: Engine, series: Series, candles: pd.DataFrame, source: str
) -> IngestResult:
    reasons = find_invalid_candles(candles, series.timeframe_ms)
    invalid = reasons != ""
    if invalid.any():
        # TODO: keep rejected rows in a rejects table instead of only logging them.
        first = candles.loc[invalid].iloc[0]
        logger.warning(
            "%s: skipped %d invalid candles from %s, first at %s: %s",
            series,
            int(invalid.sum()),
            source,
            first["open_time"],
            reasons[invalid].iloc[0],
        )
        candles = candles.loc[~invalid]

    upserted = upsert_candles(engine, series, candles)
    first_time, last_time = _time_range(candles)
    if candles.empty:
        logger.info("%s: no new closed candles from %s", series, source)
    else:
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
        received=len(candles) + int(invalid.sum()),
        inserted=upserted.inserted,
        updated=upserted.updated,
        invalid=int(invalid.sum()),
        first_open_time=first_time,
        last_open_time=last_time,
    )


def _time_range(candles: pd.DataFrame) -> tuple[str | None, str | None]:
    if candles.empty:
        return None, None
    return (
        candles["open_time"].min().isoformat(),
        candles["open_time"].max().isoformat(),
    )
