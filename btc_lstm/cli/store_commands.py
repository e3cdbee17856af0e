"""CLI commands that read or change the database without Prefect."""

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from btc_lstm.cli.engines import open_engine
from btc_lstm.errors import BtcLstmError


def open_database(upgrade: bool) -> Any:
    from btc_lstm.migrate import require_current_schema, upgrade_database
    from btc_lstm.settings import load_settings

    database_url = load_settings().database_url
    if not upgrade:
        _require_existing_sqlite_file(database_url)
    engine = open_engine(database_url)
    if upgrade:
        upgrade_database(engine)
    else:
        require_current_schema(engine)
    return engine


def _require_existing_sqlite_file(database_url: str) -> None:
    """Reject a SQLite path that does not exist, instead of creating an empty file."""
    from btc_lstm.store.connection import normalize_database_url

    url = normalize_database_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    if not Path(url.database).exists():
        raise BtcLstmError(
            f"database file {url.database} does not exist; check "
            "BTC_LSTM_DATABASE_URL, or create it with `btc-lstm db upgrade` or "
            "`btc-lstm run`"
        )


def import_csv_files(arguments: argparse.Namespace) -> int:
    from btc_lstm.ingest import import_candle_file

    engine = open_database(upgrade=True)
    for path in arguments.paths:
        result = import_candle_file(
            engine, path, exchange=arguments.exchange, symbol=arguments.symbol
        )
        unchanged = result.received - result.inserted - result.updated - result.rejected
        print(
            f"{path}: {result.exchange} {result.symbol} {result.timeframe}: "
            f"{result.received} rows read, {result.inserted} stored, "
            f"{result.updated} updated, {unchanged} unchanged, "
            f"{result.rejected} rejected"
        )
    return 0


def print_predictions(arguments: argparse.Namespace) -> int:
    import pandas as pd

    from btc_lstm.store import FORECAST_COLUMNS, list_series, load_latest_forecast

    engine = open_database(upgrade=False)
    selected = _select_series(arguments, list_series(engine))
    frames = [
        load_latest_forecast(engine, series).assign(**asdict(series))
        for series in selected
    ]

    columns = ["exchange", "symbol", "timeframe", *FORECAST_COLUMNS]
    table = pd.concat(frames, ignore_index=True)[columns]
    # Baselines have no model run; print an empty cell rather than NaN.
    table["model_run_id"] = table["model_run_id"].astype("Int64")
    if arguments.format == "csv":
        print(table.to_csv(index=False), end="")
    elif arguments.format == "json":
        records = table.astype({"as_of_open_time": str, "target_open_time": str})
        records = records.astype(object).where(records.notna(), None)
        print(json.dumps(records.to_dict(orient="records"), indent=2))
    else:
        print(table.to_string(index=False, na_rep=""))
    return 0


def write_report_files(arguments: argparse.Namespace) -> int:
    from btc_lstm.report import write_report
    from btc_lstm.store import list_series
    from btc_lstm.store.schema import backtest_runs

    engine = open_database(upgrade=False)
    # A series may have a backtest and no forecast yet, or the other way round.
    stored = sorted(
        set(list_series(engine)) | set(list_series(engine, backtest_runs)),
        key=str,
    )
    for series in _select_series(arguments, stored):
        report = write_report(engine, series, arguments.out)
        for path in (report.forecast_png, report.backtest_png):
            if path is not None:
                print(path)
        if report.backtest_png is None:
            print(f"{series}: no backtest stored; run `btc-lstm backtest` for one")
    return 0


def _select_series(arguments: argparse.Namespace, stored: list[Any]) -> list[Any]:
    """Return the stored series that match --exchange, --symbol and --timeframe.

    Raises:
        BtcLstmError: nothing is stored, or nothing matches the filters.
    """
    if not stored:
        raise BtcLstmError("no forecasts stored yet; run `btc-lstm run` first")
    selected = [
        series
        for series in stored
        if arguments.exchange in (None, series.exchange)
        and arguments.symbol in (None, series.symbol)
        and arguments.timeframe in (None, series.timeframe)
    ]
    if not selected:
        raise BtcLstmError(
            "no forecasts match the filters; forecasts exist for "
            + ", ".join(str(series) for series in stored)
        )
    return selected


def upgrade_database_command(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import upgrade_database

    return _migrate(upgrade_database, arguments.revision)


def downgrade_database_command(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import downgrade_database

    return _migrate(downgrade_database, arguments.revision)


def _migrate(migration: Callable[[Any, str], None], revision: str) -> int:
    from btc_lstm.migrate import current_revision
    from btc_lstm.settings import load_settings
    from btc_lstm.store.connection import mask_database_url

    database_url = load_settings().database_url
    engine = open_engine(database_url)
    migration(engine, revision)
    print(
        f"{mask_database_url(database_url)}: schema at revision "
        f"{current_revision(engine) or 'base (no tables)'}"
    )
    return 0


def print_revision(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import current_revision, head_revision
    from btc_lstm.settings import load_settings

    database_url = load_settings().database_url
    _require_existing_sqlite_file(database_url)
    engine = open_engine(database_url)
    current = current_revision(engine)
    print(f"current: {current or 'none (empty database)'}; newest: {head_revision()}")
    return 0
