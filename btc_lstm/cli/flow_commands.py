"""CLI commands that run Prefect flows: run, ingest, train, forecast, backtest and
serve."""

import argparse
import logging
from typing import Any

from btc_lstm.cli.engines import open_engine
from btc_lstm.errors import BtcLstmError, ConfigError


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
        "ccxt_config_by_exchange": arguments.ccxt_config_by_exchange,
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

        for exchange_id in {series.exchange for series in settings.configured_series()}:
            check_exchange_id(exchange_id)
    open_engine(settings.database_url)


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


def run_daily(arguments: argparse.Namespace) -> int:
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


def run_ingest(arguments: argparse.Namespace) -> int:
    overrides = {**_series_options(arguments), **_source_options(arguments)}
    csv_paths = _csv_paths(arguments)
    _check_before_flow(overrides, uses_exchange=csv_paths is None)
    _start_flows(arguments.debug)
    from flows.pipeline import ingest

    ingest(csv_paths=csv_paths, **overrides)
    return 0


def run_train(arguments: argparse.Namespace) -> int:
    overrides = {**_series_options(arguments), **_model_options(arguments)}
    _check_before_flow(overrides, uses_exchange=False)
    _start_flows(arguments.debug)
    from flows.pipeline import train

    train(**overrides)
    return 0


def run_forecast(arguments: argparse.Namespace) -> int:
    overrides = _series_options(arguments)
    _check_before_flow(overrides, uses_exchange=False)
    _start_flows(arguments.debug)
    from flows.pipeline import forecast

    forecast(**overrides)
    return 0


def run_backtest(arguments: argparse.Namespace) -> int:
    if arguments.candles < 1:
        raise ConfigError(
            f"--candles must be at least 1, got {arguments.candles}; it is how many "
            "past candles to forecast from"
        )
    if arguments.report_folder is not None:
        from btc_lstm.report import prepare_report_folder

        prepare_report_folder(arguments.report_folder)
    overrides = {
        **_series_options(arguments),
        **_model_options(arguments),
        "retrain_every_candles": arguments.retrain_every_candles,
    }
    _check_before_flow(overrides, uses_exchange=False)
    _start_flows(arguments.debug)
    from flows.pipeline import backtest

    report_folder = arguments.report_folder
    results = backtest(
        as_of_candles=arguments.candles,
        last_as_of=arguments.last_as_of,
        report_folder=str(report_folder.resolve()) if report_folder else None,
        **overrides,
    )
    for result in results:
        print(_backtest_line(result))
    return 0


def _backtest_line(result: dict[str, Any]) -> str:
    """Return one line per backtest: its id, range and step-1 MAE ratios."""
    ratios = ", ".join(
        f"{model} {values['mae_ratio_to_last_close']:.3f}"
        for model, values in result["step_1"].items()
        if values["mae_ratio_to_last_close"] is not None
    )
    return (
        f"{result['exchange']} {result['symbol']} {result['timeframe']}: backtest "
        f"{result['backtest_run_id']} as of {result['first_as_of_open_time'][:10]}.."
        f"{result['last_as_of_open_time'][:10]}, step-1 MAE ratio to last close: "
        f"{ratios}"
    )


def serve_daily(arguments: argparse.Namespace) -> int:
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
