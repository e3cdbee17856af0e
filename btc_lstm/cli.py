"""The btc-lstm command: run the daily job or one stage of it, and read forecasts.

Imports are deferred into each command so that `btc-lstm --help` and the commands
that do not train never load TensorFlow, and those that run no flow never load
Prefect.
"""

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from btc_lstm.errors import BtcLstmError

logger = logging.getLogger("btc_lstm.cli")


FLOW_COMMANDS = {"run", "ingest", "train", "forecast", "serve"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    _configure_logging(arguments.verbose, arguments.command in FLOW_COMMANDS)
    if arguments.database_url:
        # The URL travels by environment, never as a flow parameter, so that its
        # password is not stored with flow runs.
        os.environ["BTC_LSTM_DATABASE_URL"] = arguments.database_url
    try:
        result: int = arguments.handler(arguments)
    except BtcLstmError as exc:
        if arguments.debug:
            raise
        print(f"btc-lstm: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # A database failure in mid-run (a lock held too long, a table that
        # another application created) is reported in one line too. Anything
        # else is a bug and keeps its traceback.
        if arguments.debug or not _is_database_error(exc):
            raise
        print(f"btc-lstm: error: {_describe_database_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("btc-lstm: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_engines()
        _remove_stderr_handler()
    return result


def _is_database_error(exc: BaseException) -> bool:
    if "sqlalchemy" not in sys.modules:
        return False
    import sqlalchemy as sa

    return isinstance(exc, sa.exc.DBAPIError)


def _describe_database_error(exc: Any) -> str:
    # Only the driver's own first line: the statement and its parameters can be
    # long and may contain data.
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return (
        f"database operation failed: {reason}; check that no other program holds "
        "a lock on the database and that its tables are btc-lstm's "
        "(`btc-lstm db current`), then run again"
    )


_engines: list[Any] = []


def _open_engine(database_url: str) -> Any:
    from btc_lstm.store import create_db_engine

    _engines.append(create_db_engine(database_url))
    return _engines[-1]


def _close_engines() -> None:
    while _engines:
        _engines.pop().dispose()
    if "flows.tasks" in sys.modules:
        sys.modules["flows.tasks"].dispose_engines()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the store (env BTC_LSTM_DATABASE_URL; "
        "default sqlite:///btc_lstm.db)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log debug lines too"
    )
    parser = argparse.ArgumentParser(
        prog="btc-lstm",
        description="Daily crypto candles in, LSTM forecasts out. Settings come from "
        "BTC_LSTM_* environment variables; each command's flags override them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        return command

    run = add_command("run", "run the daily flow once: ingest, train, forecast")
    _add_series_options(run)
    _add_source_options(run)
    _add_model_options(run)
    run.set_defaults(handler=_run_daily)

    ingest = add_command("ingest", "run the ingest flow: store new closed candles")
    _add_series_options(ingest)
    _add_source_options(ingest)
    ingest.set_defaults(handler=_run_ingest)

    train = add_command("train", "run the train flow: retrain on the newest window")
    _add_series_options(train)
    _add_model_options(train)
    train.set_defaults(handler=_run_train)

    forecast = add_command(
        "forecast", "run the forecast flow: forecast from the newest candle"
    )
    _add_series_options(forecast)
    forecast.set_defaults(handler=_run_forecast)

    serve = add_command(
        "serve",
        "run the daily flow on its schedule, in the foreground, until stopped",
    )
    _add_series_options(serve)
    _add_model_options(serve)
    serve.set_defaults(handler=_serve)

    import_csv = add_command(
        "import-csv", "store the candles of CSV files, without Prefect"
    )
    import_csv.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="candle CSV file"
    )
    import_csv.add_argument(
        "--exchange", help="ccxt id of the source (default: from the file name)"
    )
    import_csv.add_argument(
        "--symbol", help="unified symbol such as BTC/USDT (default: from the file)"
    )
    import_csv.set_defaults(handler=_import_csv)

    predictions = add_command("predictions", "print the newest forecast of each series")
    predictions.add_argument("--exchange", help="only this exchange")
    predictions.add_argument("--symbol", help="only this symbol")
    predictions.add_argument("--timeframe", help="only this timeframe")
    predictions.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="output format (default: table)",
    )
    predictions.set_defaults(handler=_print_predictions)

    database = subparsers.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = database_commands.add_parser(
        "upgrade",
        help="create or upgrade the tables to the newest revision",
        parents=[common],
    )
    upgrade.add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head)"
    )
    upgrade.set_defaults(handler=_upgrade_database)
    downgrade = database_commands.add_parser(
        "downgrade",
        help="revert to REVISION (base drops every table and its data)",
        parents=[common],
    )
    downgrade.add_argument("revision", help="target revision, or base")
    downgrade.set_defaults(handler=_downgrade_database)
    current = database_commands.add_parser(
        "current", help="print the schema revision of the database", parents=[common]
    )
    current.set_defaults(handler=_print_revision)
    return parser


def _add_series_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", help="ccxt exchange id (env BTC_LSTM_EXCHANGE)")
    parser.add_argument(
        "--symbols",
        type=_comma_list,
        help="comma-separated unified symbols (env BTC_LSTM_SYMBOLS), e.g. BTC/USDT",
    )
    parser.add_argument(
        "--timeframe", help="candle length such as 1d or 4h (env BTC_LSTM_TIMEFRAME)"
    )


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history-start",
        type=_parse_date,
        metavar="YYYY-MM-DD",
        help="UTC day where a first backfill starts (env BTC_LSTM_HISTORY_START)",
    )
    parser.add_argument(
        "--ccxt-config",
        type=_parse_json_object,
        metavar="JSON",
        help="JSON object for the ccxt exchange constructor, replacing "
        "BTC_LSTM_CCXT_CONFIG",
    )
    parser.add_argument(
        "--csv",
        dest="csv_paths",
        action="append",
        type=Path,
        metavar="PATH",
        help="read candles from this CSV file instead of the exchange (repeatable); "
        "the series trained and forecast are the files' own",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    options = [
        ("--window-candles", "candles in the training window"),
        ("--lookback-candles", "candles the model reads per forecast"),
        ("--horizon-candles", "candles ahead each forecast covers"),
        ("--epochs", "maximum training epochs"),
        ("--random-seed", "seed of the weights and shuffling"),
    ]
    for flag, help_text in options:
        env_name = "BTC_LSTM_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, type=int, help=f"{help_text} (env {env_name})")


def _parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid date {value!r}; write it as YYYY-MM-DD"
        ) from exc


def _parse_json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(
            'expected a JSON object such as {"timeout": 30000}'
        )
    return parsed


def _comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _configure_logging(verbose: bool, runs_flow: bool) -> None:
    """Send library log lines to stderr, through Prefect's handlers for flow commands.

    Prefect configures logging when it is imported: with btc_lstm among its extra
    loggers, library lines reach its console handler and the flow run's logs in
    the UI. Commands that run no flow use a plain stderr handler instead.
    """
    level = "DEBUG" if verbose else "INFO"
    if runs_flow:
        os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "btc_lstm")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    library_logger = logging.getLogger("btc_lstm")
    library_logger.setLevel(level)
    if runs_flow:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_STDERR_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    library_logger.addHandler(handler)


_STDERR_HANDLER_NAME = "btc-lstm-cli-stderr"


def _remove_stderr_handler() -> None:
    # main() may run more than once in a process, as in the tests, each time
    # with another sys.stderr, so it removes the handler that it added.
    library_logger = logging.getLogger("btc_lstm")
    for handler in list(library_logger.handlers):
        if handler.get_name() == _STDERR_HANDLER_NAME:
            library_logger.removeHandler(handler)


def _series_options(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "symbols": arguments.symbols,
        "exchange": arguments.exchange,
        "timeframe": arguments.timeframe,
    }


def _model_options(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "window_candles": arguments.window_candles,
        "lookback_candles": arguments.lookback_candles,
        "horizon_candles": arguments.horizon_candles,
        "epochs": arguments.epochs,
        "random_seed": arguments.random_seed,
    }


def _source_options(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "history_start": arguments.history_start,
        "ccxt_config": arguments.ccxt_config,
    }


def _csv_paths(arguments: argparse.Namespace) -> list[str] | None:
    """Return the --csv paths as absolute paths, after reading each file once.

    Reading them here reports a bad file in one line before Prefect starts.
    """
    if not arguments.csv_paths:
        return None
    from btc_lstm.csv_import import read_candle_csv

    for path in arguments.csv_paths:
        read_candle_csv(path)
    return [str(path.resolve()) for path in arguments.csv_paths]


def _check_before_flow(overrides: dict[str, Any], uses_exchange: bool) -> None:
    """Fail fast on a bad setting, exchange id or database before Prefect starts."""
    from btc_lstm.settings import load_settings

    settings = load_settings(**overrides)
    if uses_exchange:
        from btc_lstm.exchange import check_exchange_id

        check_exchange_id(settings.exchange)
    _open_engine(settings.database_url)


def _start_flows(debug: bool) -> None:
    """Import Prefect, then keep tracebacks out of its console lines unless --debug.

    The flow run's logs in the Prefect UI keep the full tracebacks. The terminal
    shows one line per failure, and the command ends with the error message.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    import flows.pipeline  # noqa: F401 - configures Prefect's logging

    _check_prefect_api()
    if debug:
        return
    loggers = [logging.getLogger()] + [
        candidate
        for candidate in logging.root.manager.loggerDict.values()
        if isinstance(candidate, logging.Logger)
    ]
    for candidate in loggers:
        for handler in candidate.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _TracebackFreeFormatter
            ):
                inner = handler.formatter or logging.Formatter()
                handler.setFormatter(_TracebackFreeFormatter(inner))


def _check_prefect_api() -> None:
    """Check that a configured Prefect API responds, before a flow run needs it.

    Raises:
        BtcLstmError: PREFECT_API_URL is set, in the environment or the active
            Prefect profile, and the server does not respond.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        return  # Each flow run starts a temporary server of its own.
    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        problem = exc
    if problem is not None:
        raise BtcLstmError(
            f"cannot reach the Prefect API at {api_url}: {problem}; start the "
            "server (`prefect server start`) or unset the URL "
            "(`prefect config unset PREFECT_API_URL`)"
        )


class _TracebackFreeFormatter(logging.Formatter):
    """Format records as `inner` does, without exception tracebacks."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = None
        bare.exc_text = None
        bare.stack_info = None
        return self._inner.format(bare)


def _run_daily(arguments: argparse.Namespace) -> int:
    overrides = {
        **_series_options(arguments),
        **_source_options(arguments),
        **_model_options(arguments),
    }
    csv_paths = _csv_paths(arguments)
    _check_before_flow(overrides, uses_exchange=csv_paths is None)
    _start_flows(arguments.debug)
    from flows.pipeline import daily

    daily(csv_paths=csv_paths, **overrides)
    return 0


def _run_ingest(arguments: argparse.Namespace) -> int:
    overrides = {**_series_options(arguments), **_source_options(arguments)}
    csv_paths = _csv_paths(arguments)
    _check_before_flow(overrides, uses_exchange=csv_paths is None)
    _start_flows(arguments.debug)
    from flows.pipeline import ingest

    ingest(csv_paths=csv_paths, **overrides)
    return 0


def _run_train(arguments: argparse.Namespace) -> int:
    overrides = {**_series_options(arguments), **_model_options(arguments)}
    _check_before_flow(overrides, uses_exchange=False)
    _start_flows(arguments.debug)
    from flows.pipeline import train

    train(**overrides)
    return 0


def _run_forecast(arguments: argparse.Namespace) -> int:
    overrides = _series_options(arguments)
    _check_before_flow(overrides, uses_exchange=False)
    _start_flows(arguments.debug)
    from flows.pipeline import forecast

    forecast(**overrides)
    return 0


def _serve(arguments: argparse.Namespace) -> int:
    from btc_lstm.candles import schedule_cron
    from btc_lstm.settings import load_settings

    overrides = {**_series_options(arguments), **_model_options(arguments)}
    _check_before_flow(overrides, uses_exchange=True)
    settings = load_settings(**overrides)
    cron = schedule_cron(settings.timeframe)
    _start_flows(arguments.debug)
    from prefect.schedules import Cron

    from flows.pipeline import daily

    # The time zone is explicit, so daylight saving time cannot move the runs.
    daily.serve(
        name=f"daily-{settings.timeframe}",
        schedules=[Cron(cron, timezone="UTC")],
        parameters={
            name: value for name, value in overrides.items() if value is not None
        },
    )
    return 0


def _open_database(upgrade: bool) -> Any:
    from btc_lstm.migrate import require_current_schema, upgrade_database
    from btc_lstm.settings import load_settings

    database_url = load_settings().database_url
    if not upgrade:
        _require_existing_sqlite_file(database_url)
    engine = _open_engine(database_url)
    if upgrade:
        upgrade_database(engine)
    else:
        require_current_schema(engine)
    return engine


def _require_existing_sqlite_file(database_url: str) -> None:
    """Reject a SQLite path that does not exist, instead of creating an empty file."""
    from btc_lstm.store import normalize_database_url

    url = normalize_database_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    if not Path(url.database).exists():
        raise BtcLstmError(
            f"database file {url.database} does not exist; check "
            "BTC_LSTM_DATABASE_URL, or create it with `btc-lstm db upgrade` or "
            "`btc-lstm run`"
        )


def _import_csv(arguments: argparse.Namespace) -> int:
    from btc_lstm.ingest import import_candle_file

    engine = _open_database(upgrade=True)
    for path in arguments.paths:
        result = import_candle_file(
            engine, path, exchange=arguments.exchange, symbol=arguments.symbol
        )
        print(
            f"{path}: {result.exchange} {result.symbol} {result.timeframe}: "
            f"{result.received} rows read, {result.inserted} new, "
            f"{result.updated} revised"
        )
    return 0


def _print_predictions(arguments: argparse.Namespace) -> int:
    import pandas as pd

    from btc_lstm.store import list_series, load_latest_forecast

    engine = _open_database(upgrade=False)
    stored = list_series(engine)
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
    frames = [
        load_latest_forecast(engine, series).assign(**asdict(series))
        for series in selected
    ]

    columns = [
        "exchange",
        "symbol",
        "timeframe",
        "as_of_open_time",
        "target_open_time",
        "horizon_step",
        "predicted_close",
        "model_run_id",
    ]
    table = pd.concat(frames, ignore_index=True)[columns]
    if arguments.format == "csv":
        print(table.to_csv(index=False), end="")
    elif arguments.format == "json":
        records = table.astype({"as_of_open_time": str, "target_open_time": str})
        print(json.dumps(records.to_dict(orient="records"), indent=2))
    else:
        print(table.to_string(index=False))
    return 0


def _upgrade_database(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import current_revision, upgrade_database
    from btc_lstm.settings import load_settings
    from btc_lstm.store import mask_database_url

    database_url = load_settings().database_url
    engine = _open_engine(database_url)
    upgrade_database(engine, arguments.revision)
    print(
        f"{mask_database_url(database_url)}: schema at revision "
        f"{current_revision(engine)}"
    )
    return 0


def _downgrade_database(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import current_revision, downgrade_database
    from btc_lstm.settings import load_settings
    from btc_lstm.store import mask_database_url

    database_url = load_settings().database_url
    engine = _open_engine(database_url)
    downgrade_database(engine, arguments.revision)
    print(
        f"{mask_database_url(database_url)}: schema at revision "
        f"{current_revision(engine) or 'base (no tables)'}"
    )
    return 0


def _print_revision(arguments: argparse.Namespace) -> int:
    from btc_lstm.migrate import current_revision, head_revision
    from btc_lstm.settings import load_settings

    database_url = load_settings().database_url
    _require_existing_sqlite_file(database_url)
    engine = _open_engine(database_url)
    current = current_revision(engine)
    print(f"current: {current or 'none (empty database)'}; newest: {head_revision()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
