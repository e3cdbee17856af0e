"""Prefect tasks: one library call each, with retries where the network is involved."""

import datetime as dt
import logging
import re
import threading
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from sqlalchemy.engine import Engine

from btc_lstm.candles import Series
from btc_lstm.errors import ExchangeUnavailableError
from btc_lstm.ingest import import_candle_file, ingest_from_exchange
from btc_lstm.migrate import upgrade_database
from btc_lstm.settings import Settings
from btc_lstm.store.connection import create_db_engine

# Prefect's logging setup leaves extra loggers at the root level, WARNING, so the
# library's per-stage INFO lines would not reach a deployed run's logs.
if logging.getLogger("btc_lstm").level == logging.NOTSET:
    logging.getLogger("btc_lstm").setLevel(logging.INFO)

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(database_url: str) -> Engine:
    """Return one engine per database URL for the life of the process.

    Tasks run in worker threads, so the engine, and its connection pool, is
    shared between them instead of being opened by each task.
    """
    with _engines_lock:
        if database_url not in _engines:
            _engines[database_url] = create_db_engine(database_url)
        return _engines[database_url]


def dispose_engines() -> None:
    """Close every engine that `engine_for` opened."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def is_temporary_failure(
    _task: Task[Any, Any], _run: TaskRun, state: State[Any]
) -> bool:
    """Retry only when the exchange was unreachable, never on a permanent error."""
    return isinstance(state.result(raise_on_failure=False), ExchangeUnavailableError)


def retry_delays_seconds(settings: Settings) -> list[float]:
    """Return the retry delays of a fetch: the base delay, then 3x longer each time."""
    return [
        settings.fetch_retry_delay_seconds * 3**attempt
        for attempt in range(settings.fetch_retries)
    ]


# Tasks write to the database, so none of them may be skipped by a result cache.
@task(cache_policy=NO_CACHE)
def prepare_database(settings: Settings) -> None:
    """Create or upgrade the tables before anything is written."""
    upgrade_database(engine_for(settings.database_url))


@task(cache_policy=NO_CACHE, retry_condition_fn=is_temporary_failure)
def fetch_candles(settings: Settings, series: Series) -> dict[str, Any]:
    """Fetch the new closed candles of one series from the exchange."""
    result = ingest_from_exchange(
        engine_for(settings.database_url),
        series,
        history_start=settings.history_start,
        ccxt_config=settings.ccxt_config_for(series.exchange),
    )
    return result.as_dict()


@task(cache_policy=NO_CACHE)
def import_candle_csv(settings: Settings, path: str) -> dict[str, Any]:
    """Import one candle CSV file."""
    result = import_candle_file(engine_for(settings.database_url), Path(path))
    return result.as_dict()


@task(cache_policy=NO_CACHE)
def train_model(settings: Settings, series: Series) -> dict[str, Any]:
    """Train a model on the newest window of one series, or reuse the current one."""
    from btc_lstm.train import train_series

    return train_series(engine_for(settings.database_url), settings, series).as_dict()


@task(cache_policy=NO_CACHE)
def write_forecast(settings: Settings, series: Series) -> dict[str, Any]:
    """Write the forecast after the newest candle of one series."""
    from btc_lstm.forecast import forecast_series

    return forecast_series(
        engine_for(settings.database_url), series, settings.live_error_candles
    ).as_dict()


@task(cache_policy=NO_CACHE)
def run_backtest(
    settings: Settings,
    series: Series,
    as_of_candles: int,
    last_as_of: dt.date | None,
) -> dict[str, Any]:
    """Walk the daily job forward over past candles of one series and score it."""
    from btc_lstm.backtest import backtest_series

    result = backtest_series(
        engine_for(settings.database_url),
        settings,
        series,
        as_of_candles=as_of_candles,
        last_as_of=last_as_of,
    )
    return result.as_dict()


@task(cache_policy=NO_CACHE)
def publish_report(settings: Settings, series: Series, folder: str) -> dict[str, Any]:
    """Draw the forecast and backtest pictures of one series into `folder` and
    attach them, with the backtest's metrics table, to the flow run."""
    from btc_lstm.report import image_markdown, write_report

    report = write_report(engine_for(settings.database_url), series, Path(folder))
    sections = [f"## {series}"]
    for title, path in [
        ("forecast of record", report.forecast_png),
        ("backtest", report.backtest_png),
    ]:
        if path is not None:
            sections.append(f"{title}: `{path.name}`\n\n{image_markdown(path, title)}")
    if report.metrics_markdown is not None:
        sections.append(report.metrics_markdown)
    slug = re.sub(r"[^a-z0-9]+", "-", str(series).lower()).strip("-")
    create_markdown_artifact(
        key=f"report-{slug}",
        markdown="\n\n".join(sections),
        description=f"Forecast and backtest pictures of {series}",
    )
    return {
        "series": str(series),
        "forecast_png": str(report.forecast_png) if report.forecast_png else None,
        "backtest_png": str(report.backtest_png) if report.backtest_png else None,
    }
