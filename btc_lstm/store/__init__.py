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

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from btc_lstm.candles import CANDLE_COLUMNS, Series
from btc_lstm.errors import DatabaseError
from btc_lstm.store.schema import (
    UTCDateTime,
    backtest_forecasts,
    backtest_metrics,
    backtest_runs,
    model_runs,
    ohlcv,
    predictions,
    rejected_candles,
)

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
    with engine.begin() as connection:
        return _upsert_candles(connection, series, candles)


def store_candles(
    engine: Engine,
    series: Series,
    candles: pd.DataFrame,
    rejected: pd.DataFrame,
    source: str,
) -> UpsertResult:
    """Upsert valid candles and record rejected ones, all in one transaction.

    A rejected candle that a later ingest of the same source delivers valid is
    removed from `rejected_candles` when the valid one is stored.

    Args:
        candles: valid closed candles, as for `upsert_candles`.
        rejected: the rejected rows of the same ingest: `CANDLE_COLUMNS` plus
            `reason`; open times are unique.
        source: exchange id or file name the rows came from.

    Returns:
        The counts of the candle upsert.
    """
    with engine.begin() as connection:
        upserted = UpsertResult(0, 0, 0)
        if not candles.empty:
            upserted = _upsert_candles(connection, series, candles)
            _delete_accepted_rejects(connection, series, source, candles)
        upsert_rejected_candles(connection, series, rejected, source)
    return upserted


def _upsert_candles(
    connection: Connection, series: Series, candles: pd.DataFrame
) -> UpsertResult:
    now = dt.datetime.now(dt.UTC)
    stored = _load_stored_values(connection, series, candles)
    merged = candles.merge(stored, on="open_time", how="left", suffixes=("", "_stored"))
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


_SOURCE_LENGTH = 255


def upsert_rejected_candles(
    connection: Connection, series: Series, rejected: pd.DataFrame, source: str
) -> int:
    """Record rejected candles with their reason inside the caller's transaction.

    A row already recorded for the same series, source and open time is updated
    with the new values and reason instead of being added again. Missing (NaN)
    values are stored as NULL.

    Args:
        rejected: `CANDLE_COLUMNS` plus `reason`, with unique open times.
        source: exchange id or file name; longer names are cut to 255 characters.

    Returns:
        How many rows were written.
    """
    if rejected.empty:
        return 0
    now = dt.datetime.now(dt.UTC)
    value_columns = CANDLE_COLUMNS[1:]
    values = rejected[value_columns].astype("float64")
    rows = [
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "timeframe": series.timeframe,
            "source": source[:_SOURCE_LENGTH],
            "open_time": open_time.to_pydatetime(),
            "reason": reason,
            "rejected_at": now,
            **{
                name: None if np.isnan(value) else value
                for name, value in zip(value_columns, row, strict=True)
            },
        }
        for open_time, reason, row in zip(
            rejected["open_time"],
            rejected["reason"],
            values.to_numpy().tolist(),
            strict=True,
        )
    ]
    statement = _insert(connection, rejected_candles)
    statement = statement.on_conflict_do_update(
        index_elements=["exchange", "symbol", "timeframe", "source", "open_time"],
        set_={
            column: statement.excluded[column]
            for column in [*value_columns, "reason", "rejected_at"]
        },
    )
    connection.execute(statement, rows)
    return len(rows)


def _delete_accepted_rejects(
    connection: Connection, series: Series, source: str, candles: pd.DataFrame
) -> None:
    """Delete the rejects of this source whose open time now has a valid candle."""
    source_filter = [
        *_series_filter(rejected_candles, series),
        rejected_candles.c.source == source[:_SOURCE_LENGTH],
    ]
    query = sa.select(rejected_candles.c.id, rejected_candles.c.open_time).where(
        *source_filter
    )
    recorded = _frame(connection.execute(query).all(), ["id", "open_time"])
    accepted = recorded.loc[recorded["open_time"].isin(candles["open_time"]), "id"]
    if not accepted.empty:
        connection.execute(
            sa.delete(rejected_candles).where(
                rejected_candles.c.id.in_([int(row_id) for row_id in accepted])
            )
        )


def load_rejected_candles(
    engine: Engine, series: Series | None = None, source: str | None = None
) -> pd.DataFrame:
    """Return recorded rejected candles, oldest open time first.

    Args:
        series: only the rejects of this series; None for all series.
        source: only the rejects from this exchange id or file name.

    Returns:
        A frame with the columns exchange, symbol, timeframe, open_time, source,
        open, high, low, close, volume, reason and rejected_at; missing values
        are NaN.
    """
    columns = [
        "exchange",
        "symbol",
        "timeframe",
        "open_time",
        "source",
        *CANDLE_COLUMNS[1:],
        "reason",
        "rejected_at",
    ]
    query = sa.select(*(rejected_candles.c[name] for name in columns)).order_by(
        rejected_candles.c.open_time, rejected_candles.c.id
    )
    if series is not None:
        query = query.where(*_series_filter(rejected_candles, series))
    if source is not None:
        query = query.where(rejected_candles.c.source == source[:_SOURCE_LENGTH])
    with engine.connect() as connection:
        rejects = _frame(connection.execute(query).all(), columns)
    rejects[CANDLE_COLUMNS[1:]] = rejects[CANDLE_COLUMNS[1:]].astype("float64")
    return rejects


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


def load_published_model_run(engine: Engine, series: Series) -> dict[str, Any] | None:
    """Return the published LSTM run of a series, or None when last close is.

    The published run is the newest promoted one, unless it was demoted since: a
    demotion is not undone by falling back to an older run.
    """
    query = (
        sa.select(model_runs)
        .where(*_series_filter(model_runs, series), model_runs.c.promoted.is_(True))
        .order_by(model_runs.c.window_end_open_time.desc(), model_runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None or row["demoted_at"] is not None:
        return None
    return dict(row)


def demote_model_run(engine: Engine, model_run_id: int, reason: str) -> None:
    """Mark a published model run as demoted now, with the reason."""
    with engine.begin() as connection:
        connection.execute(
            model_runs.update()
            .where(model_runs.c.id == model_run_id)
            .values(demoted_at=dt.datetime.now(dt.UTC), demotion_reason=reason)
        )


def load_live_lstm_errors(engine: Engine, series: Series, limit: int) -> pd.DataFrame:
    """Return the newest scored step-1 LSTM forecasts of a series.

    Returns:
        Up to `limit` rows with target_open_time, absolute_error and
        last_close_absolute_error from `forecast_accuracy`, one per target (the
        newest model run's), oldest first.
    """
    query = sa.text(
        "SELECT target_open_time, model_run_id, absolute_error, "
        "last_close_absolute_error FROM forecast_accuracy "
        "WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe "
        "AND model = 'lstm' AND horizon_step = 1 "
        "ORDER BY target_open_time DESC, model_run_id DESC"
    )
    with engine.connect() as connection:
        rows = connection.execute(
            query,
            {
                "exchange": series.exchange,
                "symbol": series.symbol,
                "timeframe": series.timeframe,
            },
        ).all()
    frame = pd.DataFrame(
        [tuple(row) for row in rows],
        columns=[
            "target_open_time",
            "model_run_id",
            "absolute_error",
            "last_close_absolute_error",
        ],
    )
    frame = frame.drop_duplicates("target_open_time").head(limit)
    return frame.iloc[::-1].reset_index(drop=True)


def insert_backtest(
    engine: Engine,
    run: dict[str, Any],
    metrics: pd.DataFrame,
    forecasts: pd.DataFrame,
) -> int:
    """Store one backtest with its metrics and forecasts in one transaction.

    Returns:
        The id of the new `backtest_runs` row.
    """
    with engine.begin() as connection:
        run_id = int(
            connection.execute(
                backtest_runs.insert().returning(backtest_runs.c.id), run
            ).scalar_one()
        )
        metric_rows = [
            {"backtest_run_id": run_id, **_plain(record)}
            for record in metrics.to_dict("records")
        ]
        connection.execute(backtest_metrics.insert(), metric_rows)
        forecast_columns = [column.name for column in backtest_forecasts.columns]
        forecast_rows = [
            {"backtest_run_id": run_id, **_plain(record)}
            for record in forecasts[forecast_columns[1:]].to_dict("records")
        ]
        connection.execute(backtest_forecasts.insert(), forecast_rows)
    return run_id


def _plain(record: dict[Any, Any]) -> dict[str, Any]:
    """Turn pandas and NumPy scalars into the Python values drivers accept."""
    plain: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, pd.Timestamp):
            plain[str(key)] = value.to_pydatetime()
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            plain[str(key)] = None
        elif isinstance(value, np.generic):
            plain[str(key)] = value.item()
        else:
            plain[str(key)] = value
    return plain


def load_latest_backtest(
    engine: Engine, series: Series
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame] | None:
    """Return the newest backtest of a series: its run, metrics and forecasts."""
    with engine.connect() as connection:
        run = (
            connection.execute(
                sa.select(backtest_runs)
                .where(*_series_filter(backtest_runs, series))
                .order_by(backtest_runs.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        if run is None:
            return None
        metrics = pd.DataFrame(
            connection.execute(
                sa.select(backtest_metrics)
                .where(backtest_metrics.c.backtest_run_id == run["id"])
                .order_by(backtest_metrics.c.model, backtest_metrics.c.horizon_step)
            )
            .mappings()
            .all()
        )
        forecasts = pd.DataFrame(
            connection.execute(
                sa.select(backtest_forecasts)
                .where(backtest_forecasts.c.backtest_run_id == run["id"])
                .order_by(
                    backtest_forecasts.c.model,
                    backtest_forecasts.c.as_of_open_time,
                    backtest_forecasts.c.horizon_step,
                )
            )
            .mappings()
            .all()
        )
    return dict(run), metrics, forecasts


def insert_predictions(engine: Engine, rows: list[dict[str, Any]]) -> int:
    """Insert one forecast's rows in one transaction; return how many were new.

    Rows that already exist for the same model run, as-of candle and horizon step
    are left as they are, so writing the same forecast twice adds nothing.
    """
    if not rows:
        return 0
    # One statement for many rows needs the same keys in each, and a model
    # without intervals leaves the interval columns out.
    columns = {column for row in rows for column in row}
    rows = [{column: row.get(column) for column in columns} for row in rows]
    with engine.begin() as connection:
        # Either unique key may match: a model run's forecast from a candle, or a
        # baseline's forecast from a candle.
        statement = _insert(connection, predictions).on_conflict_do_nothing()
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


# The columns of one forecast row that users read, in the order they are shown.
FORECAST_COLUMNS = [
    "as_of_open_time",
    "target_open_time",
    "horizon_step",
    "model",
    "predicted_close",
    "lower_80",
    "upper_80",
    "lower_95",
    "upper_95",
    "model_run_id",
]


def load_latest_forecast(
    engine: Engine, series: Series, model: str | None = None
) -> pd.DataFrame:
    """Return the rows of the newest forecast of a series, by horizon step.

    Args:
        model: "lstm" or a baseline's name; None means the forecast of record.

    Returns:
        The rows of the forecast from the latest as-of candle (by the newest model
        run, for the LSTM), with their model and interval bounds. The frame is
        empty when nothing was forecast.
    """
    selection = (
        predictions.c.published.is_(True)
        if model is None
        else predictions.c.model == model
    )
    newest = (
        sa.select(predictions.c.as_of_open_time, predictions.c.model_run_id)
        .where(*_series_filter(predictions, series), selection)
        .order_by(predictions.c.as_of_open_time.desc(), predictions.c.id.desc())
        .limit(1)
    )
    columns = [*FORECAST_COLUMNS, "published", "created_at"]
    with engine.connect() as connection:
        head = connection.execute(newest).first()
        if head is None:
            return pd.DataFrame(columns=columns)
        query = (
            sa.select(*(predictions.c[name] for name in columns))
            .where(
                *_series_filter(predictions, series),
                selection,
                predictions.c.as_of_open_time == head.as_of_open_time,
                predictions.c.model_run_id.is_not_distinct_from(head.model_run_id),
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
