"""Ingest stage: bring closed candles from an exchange or a file into the store."""

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field, replace
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
from btc_lstm.exchange import (
    PAGE_RETRY_DELAY_SECONDS,
    check_market,
    create_exchange,
    fetch_closed_candles,
)
from btc_lstm.store import latest_open_time, load_open_times, store_candles
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)

# Each exchange ingest fetches the newest stored candles again, so that a candle
# the exchange revised after it was stored is updated in place. Exchanges revise
# mostly the candle that just closed.
RECHECKED_CANDLES = 3
# Runs of missing candles refetched per ingest, and missing open times listed in
# a result; the counts always cover all of them.
MAX_REFETCHED_GAPS = 20
MAX_LISTED_MISSING = 20


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
    # Exchange ingests only: candles stored by refetching gaps in the stored
    # range, and the candles still missing there, with up to MAX_LISTED_MISSING
    # of their open times (ISO 8601, oldest first).
    refetched: int = 0
    missing: int = 0
    missing_open_times: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_from_exchange(
    engine: Engine,
    series: Series,
    history_start: dt.date,
    ccxt_config: dict[str, Any],
    now_ms: int | None = None,
    page_retry_delay_seconds: float = PAGE_RETRY_DELAY_SECONDS,
) -> IngestResult:
    """Fetch the closed candles of `series` newer than the newest stored ones.

    A series with nothing stored is backfilled from `history_start` (00:00 UTC).
    Otherwise the fetch starts RECHECKED_CANDLES before the newest stored candle,
    to pick up revisions. The candle still open at `now_ms` (default: the current
    time) is never stored. Candles missing inside the stored range are then
    requested once more, and those still missing are counted in the result.

    Raises:
        UnknownExchangeError, UnknownSymbolError, ExchangeError: permanent problems.
        MixedAnchorError: the exchange's candles open at another time of day than
            the stored ones.
        ExchangeUnavailableError: the exchange could not be reached; worth a retry.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    exchange = create_exchange(series.exchange, ccxt_config)
    check_market(exchange, series)

    # A second run of the same series waits here, then fetches only what the
    # first one did not store.
    with series_lock(engine, series):
        fetcher = _Fetcher(exchange, series, now_ms, page_retry_delay_seconds)
        result, fetched = _fetch_and_store(engine, fetcher, history_start)
        return _refetch_gaps(engine, fetcher, result, fetched)


@dataclass(frozen=True)
class _Fetcher:
    exchange: Any
    series: Series
    now_ms: int
    page_retry_delay_seconds: float

    def fetch(
        self,
        since_ms: int,
        until_ms: int | None = None,
        anchor_offset_ms: int | None = None,
    ) -> pd.DataFrame:
        return fetch_closed_candles(
            self.exchange,
            self.series,
            since_ms,
            self.now_ms,
            until_ms=until_ms,
            anchor_offset_ms=anchor_offset_ms,
            page_retry_delay_seconds=self.page_retry_delay_seconds,
        )


def _fetch_and_store(
    engine: Engine, fetcher: _Fetcher, history_start: dt.date
) -> tuple[IngestResult, pd.DataFrame]:
    """Fetch and store the new candles; return the result and the candles fetched."""
    series = fetcher.series
    newest_stored = latest_open_time(engine, series)
    anchor_offset_ms = None
    if newest_stored is None:
        start = dt.datetime.combine(history_start, dt.time(), tzinfo=dt.UTC)
        since_ms = datetime_to_ms(start)
        logger.info("%s: nothing stored, backfilling from %s", series, history_start)
    else:
        newest_ms = datetime_to_ms(newest_stored)
        anchor_offset_ms = newest_ms % series.timeframe_ms
        since_ms = newest_ms - (RECHECKED_CANDLES - 1) * series.timeframe_ms

    candles = fetcher.fetch(since_ms, anchor_offset_ms=anchor_offset_ms)
    result = _store(
        engine, series, candles, source=fetcher.exchange.id, now_ms=fetcher.now_ms
    )
    return result, candles


def _refetch_gaps(
    engine: Engine, fetcher: _Fetcher, result: IngestResult, fetched: pd.DataFrame
) -> IngestResult:
    """Request the candles missing inside the stored range once more.

    Candles in `fetched`, the ones this ingest just received, are not requested
    again: they are missing because they were rejected, and would be again.

    Returns:
        `result` with the refetched candles added to its counts, and the
        candles that are still missing.
    """
    series = fetcher.series
    missing = find_missing_open_times(engine, series)
    to_refetch = missing[~missing.isin(set(fetched["open_time"]))]
    refetch = None
    if not to_refetch.empty:
        logger.info(
            "%s: %d candles missing inside the stored range, first %s; refetching",
            series,
            len(to_refetch),
            to_refetch.iloc[0],
        )
        refetch = _store(
            engine,
            series,
            _fetch_missing(fetcher, to_refetch),
            source=f"{fetcher.exchange.id} refetch",
            now_ms=fetcher.now_ms,
        )
        missing = find_missing_open_times(engine, series)

    if not missing.empty:
        logger.warning(
            "%s: %d candles still missing inside the stored range, first %s; "
            "training and forecasting skip this series while they are inside its "
            "window",
            series,
            len(missing),
            missing.iloc[0],
        )
    if refetch is not None:
        result = replace(
            result,
            received=result.received + refetch.received,
            inserted=result.inserted + refetch.inserted,
            updated=result.updated + refetch.updated,
            rejected=result.rejected + refetch.rejected,
            refetched=refetch.inserted,
        )
    return replace(
        result,
        missing=len(missing),
        missing_open_times=[
            moment.isoformat() for moment in missing.iloc[:MAX_LISTED_MISSING]
        ],
    )


def _fetch_missing(fetcher: _Fetcher, missing: pd.Series) -> pd.DataFrame:
    """Fetch the first MAX_REFETCHED_GAPS runs of `missing` open times."""
    timeframe_ms = fetcher.series.timeframe_ms
    missing_ms = open_times_ms(missing)
    anchor_offset_ms = int(missing_ms.iloc[0]) % timeframe_ms
    runs = _runs(missing_ms.tolist(), timeframe_ms)[:MAX_REFETCHED_GAPS]
    frames = [
        fetcher.fetch(first_ms, until_ms=last_ms, anchor_offset_ms=anchor_offset_ms)
        for first_ms, last_ms in runs
    ]
    found = pd.concat(frames, ignore_index=True)
    return found[found["open_time"].isin(set(missing))].reset_index(drop=True)


def find_missing_open_times(engine: Engine, series: Series) -> pd.Series:
    """Return the open times missing between the oldest and newest stored candle.

    The candles are expected every timeframe from the oldest stored one, so the
    series' anchor (00:00 or 16:00 UTC for daily candles) is the oldest candle's.
    """
    stored = load_open_times(engine, series)
    if len(stored) < 2:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    expected = pd.date_range(
        stored.iloc[0],
        stored.iloc[-1],
        freq=pd.Timedelta(series.timeframe_ms, "ms"),
    )
    missing = expected.difference(pd.DatetimeIndex(stored))
    return pd.Series(missing, dtype="datetime64[ns, UTC]")


def _runs(moments_ms: list[int], timeframe_ms: int) -> list[tuple[int, int]]:
    """Return (first, last) of each run of consecutive open times."""
    runs: list[tuple[int, int]] = []
    for moment_ms in moments_ms:
        if runs and moment_ms - runs[-1][1] == timeframe_ms:
            runs[-1] = (runs[-1][0], moment_ms)
        else:
            runs.append((moment_ms, moment_ms))
    return runs


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
