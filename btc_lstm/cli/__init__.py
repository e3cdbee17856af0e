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
from pathlib import Path
from typing import Any

from btc_lstm.cli.engines import close_engines
from btc_lstm.cli.flow_commands import (
    run_backtest,
    run_daily,
    run_forecast,
    run_ingest,
    run_train,
    serve_daily,
)
from btc_lstm.cli.store_commands import (
    downgrade_database_command,
    import_csv_files,
    print_predictions,
    print_revision,
    upgrade_database_command,
    write_report_files,
)
from btc_lstm.errors import BtcLstmError

FLOW_COMMANDS = {"run", "ingest", "train", "forecast", "backtest", "serve"}


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
    except BrokenPipeError:
        # The reader of stdout, such as `head`, has gone: stop quietly, and keep
        # Python from reporting the failed flush of stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        close_engines()
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
    run.set_defaults(handler=run_daily)

    ingest = add_command("ingest", "run the ingest flow: store new closed candles")
    _add_series_options(ingest)
    _add_source_options(ingest)
    ingest.set_defaults(handler=run_ingest)

    train = add_command("train", "run the train flow: retrain on the newest window")
    _add_series_options(train)
    _add_model_options(train)
    train.set_defaults(handler=run_train)

    forecast = add_command(
        "forecast", "run the forecast flow: forecast from the newest candle"
    )
    _add_series_options(forecast)
    forecast.set_defaults(handler=run_forecast)

    backtest = add_command(
        "backtest",
        "run the backtest flow: replay the daily job over past candles and score "
        "the LSTM and the baselines",
    )
    _add_series_options(backtest)
    _add_model_options(backtest)
    backtest.add_argument(
        "--candles",
        type=int,
        default=365,
        help="how many past candles to forecast from (default: 365)",
    )
    backtest.add_argument(
        "--last-as-of",
        type=_parse_date,
        metavar="YYYY-MM-DD",
        help="day of the last candle to forecast from (default: the newest whose "
        "targets are stored)",
    )
    backtest.add_argument(
        "--retrain-every-candles",
        type=int,
        help="candles between retrains (env BTC_LSTM_RETRAIN_EVERY_CANDLES, default 7)",
    )
    backtest.add_argument(
        "--report",
        dest="report_folder",
        type=Path,
        metavar="FOLDER",
        help="also write the pictures into FOLDER",
    )
    backtest.set_defaults(handler=run_backtest)

    report = add_command(
        "report",
        "draw the forecast of record and the newest backtest of each series as PNG "
        "files, without Prefect",
    )
    report.add_argument(
        "--out", type=Path, required=True, metavar="FOLDER", help="folder to write to"
    )
    report.add_argument("--exchange", help="only this exchange")
    report.add_argument("--symbol", help="only this symbol")
    report.add_argument("--timeframe", help="only this timeframe")
    report.set_defaults(handler=write_report_files)

    serve = add_command(
        "serve",
        "run the daily flow on its schedule, in the foreground, until stopped",
    )
    _add_series_options(serve)
    _add_model_options(serve)
    serve.set_defaults(handler=serve_daily)

    import_csv = add_command(
        "import-csv", "store the candles of CSV files, without Prefect"
    )
    import_csv.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="candle CSV file: a CryptoDataDownload export, a Binance public data "
        "dump, a Yahoo Finance download or timestamp|date,open,high,low,close,volume",
    )
    import_csv.add_argument(
        "--exchange",
        help="exchange id of the source (default: from the file's layout or name)",
    )
    import_csv.add_argument(
        "--symbol", help="unified symbol such as BTC/USDT (default: from the file)"
    )
    import_csv.set_defaults(handler=import_csv_files)

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
    predictions.set_defaults(handler=print_predictions)

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
    upgrade.set_defaults(handler=upgrade_database_command)
    downgrade = database_commands.add_parser(
        "downgrade",
        help="revert to REVISION (base drops every table and its data)",
        parents=[common],
    )
    downgrade.add_argument("revision", help="target revision, or base")
    downgrade.set_defaults(handler=downgrade_database_command)
    current = database_commands.add_parser(
        "current", help="print the schema revision of the database", parents=[common]
    )
    current.set_defaults(handler=print_revision)
    return parser


def _add_series_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", help="ccxt exchange id (env BTC_LSTM_EXCHANGE)")
    parser.add_argument(
        "--symbols",
        type=_comma_list,
        help="comma-separated unified symbols, each optionally prefixed by another "
        "exchange id (env BTC_LSTM_SYMBOLS), e.g. BTC/USDT,kraken:BTC/USD",
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
        "--ccxt-config-by-exchange",
        type=_parse_json_object,
        metavar="JSON",
        help='JSON object of ccxt configs by exchange id, such as {"kraken": '
        '{"timeout": 30000}}, replacing BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE',
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
