"""Store stage: upserts and window queries on the tables, for SQLite and Postgres.

The tables are defined in `btc_lstm.store.schema` and created only by the Alembic
migrations in migrations/. Engines and the per-series lock live in
`btc_lstm.store.connection`.
"""

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from btc_lstm.candles import CANDLE_COLUMNS, Series
from btc_lstm.errors import DatabaseError
from btc_lstm.store.schema import UTCDateTime, model_runs, ohlcv, predictions

logger = logging.getLogger(__name__)


def _insert(connection: Connection, table: sa.Table) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise DatabaseError(
        f"unsupported database {connection.dialect.name!r}; use SQLite or Postgres"
    )


@dataclass(frozen=True)
class UpsertResult:
    """Counts of one candle upsert."""

    inserted: int
    updated: int
    unchanged: int


def upsert_candles(
    engine: Engine, series: Series, candles: pd.DataFrame
) -> UpsertResult:
    """Insert new candles and update changed stored ones, in one transaction.

    Args:
        candles: closed candles with the columns in `CANDLE_COLUMNS`; open times
            are tz-aware UTC and unique.

    Returns:
        How many rows were inserted, updated (revised by the source) and unchanged.
    """
    if candles.empty:
        return UpsertResult(0, 0, 0)

    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        stored = _load_stored_values(connection, series, candles)
        merged = candles.merge(
            stored, on="open_time", how="left", suffixes=("", "_stored")
        )
        is_new = merged["close_stored"].isna()
        value_columns = ["open", "high", "low", "close", "volume"]
        differs = pd.Series(False, index=merged.index)
        for column in value_columns:
            differs |= merged[column] != merged[f"{column}_stored"]
        is_changed = ~is_new & differs

        to_write = merged.loc[is_new | is_changed, CANDLE_COLUMNS]
        if not to_write.empty:
            rows = [
                {
                    "exchange": series.exchange,
                    "symbol": series.symbol,
                    "timeframe": series.timeframe,
                    "updated_at": now,
                    **record,
                }
                for record in _records(to_write)
            ]
            statement = _insert(connection, ohlcv)
            statement = statement.on_conflict_do_update(
                index_elements=["exchange", "symbol", "timeframe", "open_time"],
                set_={
                    column: statement.excluded[column]
                    for column in [*value_columns, "updated_at"]
                },
            )
            connection.execute(statement, rows)

    inserted = int(is_new.sum())
    updated = int(is_changed.sum())
    return UpsertResult(inserted, updated, len(candles) - inserted - updated)


def _load_stored_values(
    connection: Connection, series: Series, candles: pd.DataFrame
) -> pd.DataFrame:
    query = sa.select(*_candle_columns()).where(
        *_series_filter(ohlcv, series),
        ohlcv.c.open_time >= candles["open_time"].min().to_pydatetime(),
        ohlcv.c.open_time <= candles["open_time"].max().to_pydatetime(),
    )
    return _frame(connection.execute(query).all(), CANDLE_COLUMNS)


def _records(candles: pd.DataFrame) -> list[dict[str, Any]]:
    value_columns = CANDLE_COLUMNS[1:]
    values = candles[value_columns].to_numpy(dtype="float64").tolist()
    open_times = [moment.to_pydatetime() for moment in candles["open_time"]]
    return [
        {"open_time": open_time, **dict(zip(value_columns, row, strict=True))}
        for open_time, row in zip(open_times, values, strict=True)
    ]


def _frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(row) for row in rows], columns=columns)
    if "open_time" in frame:
        frame["open_time"] = pd.to_datetime(frame["open_time"], utc=True)
    return frame


def _candle_columns() -> list[sa.Column[Any]]:
    return [ohlcv.c[name] for name in CANDLE_COLUMNS]


def _series_filter(table: sa.Table, series: Series) -> list[sa.ColumnElement[bool]]:
    return [
        table.c.exchange == series.exchange,
        table.c.symbol == series.symbol,
        table.c.timeframe == series.timeframe,
    ]


def latest_open_time(engine: Engine, series: Series) -> dt.datetime | None:
    """Return the open time of the newest stored candle of a series, or None."""
    query = sa.select(sa.func.max(ohlcv.c.open_time)).where(
        *_series_filter(ohlcv, series)
    )
    with engine.connect() as connection:
        value = connection.execute(query).scalar_one_or_none()
    if value is None:
        return None
    # func.max() loses the column type on SQLite, so the text comes back raw.
    return UTCDateTime().process_result_value(_as_datetime(value), engine.dialect)


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def count_candles(engine: Engine, series: Series) -> int:
    """Return how many candles of a series are stored."""
    query = sa.select(sa.func.count()).where(*_series_filter(ohlcv, series))
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def load_candles(
    engine: Engine, series: Series, limit: int | None = None
) -> pd.DataFrame:
    """Return the newest `limit` candles of a series (all if None), oldest first."""
    query = (
        sa.select(*_candle_columns())
        .where(*_series_filter(ohlcv, series))
        .order_by(ohlcv.c.open_time.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    candles = _frame(rows, CANDLE_COLUMNS)
    return candles.iloc[::-1].reset_index(drop=True)


def insert_model_run(engine: Engine, values: dict[str, Any]) -> int:
    """Insert one trained model with its window, settings and metrics; return its id."""
    with engine.begin() as connection:
        result = connection.execute(
            model_runs.insert().returning(model_runs.c.id), values
        )
        return int(result.scalar_one())


def find_model_run(
    engine: Engine,
    series: Series,
    window_end_open_time: dt.datetime,
    hyperparameters: dict[str, Any],
) -> int | None:
    """Return the id of a run already trained on this window with these settings."""
    query = (
        sa.select(model_runs.c.id, model_runs.c.hyperparameters)
        .where(
            *_series_filter(model_runs, series),
            model_runs.c.window_end_open_time == window_end_open_time,
        )
        .order_by(model_runs.c.id.desc())
    )
    with engine.connect() as connection:
        for run_id, stored in connection.execute(query):
            if stored == hyperparameters:
                return int(run_id)
    return None


def load_latest_model_run(engine: Engine, series: Series) -> dict[str, Any] | None:
    """Return the newest model run of a series as a dict of its columns, or None."""
    query = (
        sa.select(model_runs)
        .where(*_series_filter(model_runs, series))
        .order_by(model_runs.c.window_end_open_time.desc(), model_runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row is not None else None


def insert_predictions(engine: Engine, rows: list[dict[str, Any]]) -> int:
    """Insert one forecast's rows in one transaction; return how many were new.

    Rows that already exist for the same model run, as-of candle and horizon step
    are left as they are, so writing the same forecast twice adds nothing.
    """
    if not rows:
        return 0
    with engine.begin() as connection:
        statement = _insert(connection, predictions).on_conflict_do_nothing(
            index_elements=["model_run_id", "as_of_open_time", "horizon_step"]
        )
        result = connection.execute(statement.returning(predictions.c.id), rows)
        return len(result.all())


def forecast_exists(
    engine: Engine, model_run_id: int, as_of_open_time: dt.datetime
) -> bool:
    """Return whether a model run has already forecast from this candle."""
    query = sa.select(predictions.c.id).where(
        predictions.c.model_run_id == model_run_id,
        predictions.c.as_of_open_time == as_of_open_time,
    )
    with engine.connect() as connection:
        return connection.execute(query.limit(1)).first() is not None


def load_latest_forecast(engine: Engine, series: Series) -> pd.DataFrame:
    """Return the rows of the newest forecast of a series, by horizon step.

    The newest forecast is the one from the latest as-of candle, made by the newest
    model run that forecast from it. The frame is empty when nothing was forecast.
    """
    newest = (
        sa.select(predictions.c.as_of_open_time, predictions.c.model_run_id)
        .where(*_series_filter(predictions, series))
        .order_by(
            predictions.c.as_of_open_time.desc(), predictions.c.model_run_id.desc()
        )
        .limit(1)
    )
    columns = [
        "as_of_open_time",
        "target_open_time",
        "horizon_step",
        "predicted_close",
        "model_run_id",
        "created_at",
    ]
    with engine.connect() as connection:
        head = connection.execute(newest).first()
        if head is None:
            return pd.DataFrame(columns=columns)
        query = (
            sa.select(*(predictions.c[name] for name in columns))
            .where(
                *_series_filter(predictions, series),
                predictions.c.as_of_open_time == head.as_of_open_time,
                predictions.c.model_run_id == head.model_run_id,
            )
            .order_by(predictions.c.horizon_step)
        )
        rows = connection.execute(query).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=columns)


def list_series(engine: Engine, table: sa.Table = predictions) -> list[Series]:
    """Return the distinct series that have rows in `table`, sorted."""
    query = (
        sa.select(table.c.exchange, table.c.symbol, table.c.timeframe)
        .distinct()
        .order_by(table.c.exchange, table.c.symbol, table.c.timeframe)
    )
    with engine.connect() as connection:
        return [Series(*row) for row in connection.execute(query)]


def load_open_times(engine: Engine, series: Series) -> pd.Series:
    """Return the open times of every stored candle of a series, oldest first."""
    query = (
        sa.select(ohlcv.c.open_time)
        .where(*_series_filter(ohlcv, series))
        .order_by(ohlcv.c.open_time)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return _frame(rows, ["open_time"])["open_time"]
