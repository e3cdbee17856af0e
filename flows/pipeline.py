"""The flows `ingest`, `train`, `forecast` and `daily`, which runs the three in order,
and `backtest`, which replays the daily job over past candles.

Each flow runs one task per series so that one series' failure does not stop the
others; the ingest flow fetches all series at once. The flow still fails at the
end, with the first error as its reason.
The database URL is never a flow parameter, so its password never reaches the
Prefect API: it comes from BTC_LSTM_DATABASE_URL.
"""

import datetime as dt
import tempfile
import time
from collections.abc import Sequence
from typing import Any, cast

from prefect import Task, flow, get_client, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from btc_lstm.candles import Series
from btc_lstm.errors import ConfigError, FanOutError
from btc_lstm.settings import Settings, load_settings
from flows.tasks import (
    fetch_candles,
    import_candle_csv,
    prepare_database,
    publish_report,
    retry_delays_seconds,
    run_backtest,
    train_model,
    write_forecast,
)

COMPLETED_RESULTS = "btc_lstm_completed_results"
# Every failure of a flow's tasks, as "ErrorClass: series: message" lines, set on
# the error that the flow raises.
FAILURE_LINES = "btc_lstm_failure_lines"
FAN_OUT_POLL_SECONDS = 2.0


@flow(name="ingest")
def ingest(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
    csv_paths: list[str] | None = None,
    history_start: dt.date | None = None,
    ccxt_config: dict[str, Any] | None = None,
    ccxt_config_by_exchange: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Store new closed candles from the exchanges, or from CSV files when given.

    The series of all `symbols` entries, such as "BTC/USDT" on `exchange` and
    "kraken:BTC/USD", are fetched concurrently. Keep secrets such as API keys out
    of the ccxt configs here, because Prefect stores flow parameters; put them
    in BTC_LSTM_CCXT_CONFIG or BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE on the worker.
    """
    settings = load_settings(
        symbols=symbols,
        exchange=exchange,
        timeframe=timeframe,
        history_start=history_start,
        ccxt_config=ccxt_config,
        ccxt_config_by_exchange=ccxt_config_by_exchange,
    )
    prepare_database(settings)

    if csv_paths:
        states = [
            import_candle_csv(settings, path, return_state=True) for path in csv_paths
        ]
        return _results_or_first_error(states, csv_paths)

    fetch = fetch_candles.with_options(
        retries=settings.fetch_retries,
        retry_delay_seconds=retry_delays_seconds(settings),
    )
    series_list = settings.configured_series()
    futures = fetch.map(unmapped(settings), series_list)
    futures.wait()
    states = [future.state for future in futures]
    subjects = [str(series) for series in series_list]
    outcomes = [state.result(raise_on_failure=False) for state in states]
    create_markdown_artifact(
        key="ingest-summary",
        markdown=ingest_markdown(
            [row for row in outcomes if not isinstance(row, BaseException)],
            _failure_lines(outcomes, subjects),
        ),
        description="Candles stored, refetched and still missing per series",
    )
    return _results_or_first_error(states, subjects)


@flow(name="train")
def train(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
    window_candles: int | None = None,
    lookback_candles: int | None = None,
    horizon_candles: int | None = None,
    epochs: int | None = None,
    random_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Retrain the model of each symbol on its newest window of candles."""
    settings = load_settings(
        symbols=symbols,
        exchange=exchange,
        timeframe=timeframe,
        window_candles=window_candles,
        lookback_candles=lookback_candles,
        horizon_candles=horizon_candles,
        epochs=epochs,
        random_seed=random_seed,
    )
    prepare_database(settings)

    return _run_for_each_series(train_model, settings)


@flow(name="forecast")
def forecast(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
) -> list[dict[str, Any]]:
    """Forecast the next closes of each symbol with its newest model."""
    settings = load_settings(symbols=symbols, exchange=exchange, timeframe=timeframe)
    prepare_database(settings)

    return _run_for_each_series(write_forecast, settings)


@flow(name="daily")
def daily(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
    csv_paths: list[str] | None = None,
    history_start: dt.date | None = None,
    ccxt_config: dict[str, Any] | None = None,
    window_candles: int | None = None,
    lookback_candles: int | None = None,
    horizon_candles: int | None = None,
    epochs: int | None = None,
    random_seed: int | None = None,
    fan_out_deployment: str | None = None,
    ccxt_config_by_exchange: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Ingest, train and forecast, in that order.

    With `csv_paths`, the candles come from those files and the series to train
    and forecast are the files' own. A series whose ingest failed is neither
    trained nor forecast, and the run ends as failed with the first error.

    With `fan_out_deployment` (such as "daily/daily"), this run starts one run of
    that deployment per symbol instead, so the workers of its pool share the
    symbols, and waits for all of them.
    """
    if fan_out_deployment and csv_paths:
        raise ConfigError(
            "fan_out_deployment and csv_paths cannot be combined, because the "
            "workers may not see the files; import them with `btc-lstm import-csv` "
            "first"
        )
    if fan_out_deployment:
        settings = load_settings(symbols=symbols)
        parameters = {
            name: value
            for name, value in {
                "exchange": exchange,
                "timeframe": timeframe,
                "history_start": history_start,
                "ccxt_config": ccxt_config,
                "ccxt_config_by_exchange": ccxt_config_by_exchange,
                "window_candles": window_candles,
                "lookback_candles": lookback_candles,
                "horizon_candles": horizon_candles,
                "epochs": epochs,
                "random_seed": random_seed,
            }.items()
            if value is not None
        }
        return fan_out(fan_out_deployment, settings.symbols, parameters)

    ingest_state = ingest(
        symbols,
        exchange,
        timeframe,
        csv_paths,
        history_start,
        ccxt_config,
        ccxt_config_by_exchange,
        return_state=True,
    )
    # Only series whose candles arrived are trained and forecast: after a failed
    # ingest there is nothing new to learn from, and the next run catches up.
    groups = _series_groups(_completed_results(ingest_state))

    model_options = {
        "window_candles": window_candles,
        "lookback_candles": lookback_candles,
        "horizon_candles": horizon_candles,
        "epochs": epochs,
        "random_seed": random_seed,
    }
    train_states = []
    forecast_states = []
    for group_exchange, group_timeframe, group_symbols in groups:
        train_states.append(
            train(
                group_symbols,
                group_exchange,
                group_timeframe,
                **model_options,
                return_state=True,
            )
        )
        forecast_states.append(
            forecast(group_symbols, group_exchange, group_timeframe, return_state=True)
        )

    summary = {
        "ingested": _completed_results(ingest_state),
        "trained": [row for state in train_states for row in _completed_results(state)],
        "forecasts": [
            row for state in forecast_states for row in _completed_results(state)
        ],
    }
    errors = [
        outcome
        for state in [ingest_state, *train_states, *forecast_states]
        if isinstance(outcome := state.result(raise_on_failure=False), BaseException)
    ]
    create_markdown_artifact(
        key="daily-summary",
        markdown=summary_markdown(summary, errors),
        description="Candles stored, models trained and forecasts written",
    )
    forecast_series = [
        Series(row["exchange"], row["symbol"], row["timeframe"])
        for row in summary["forecasts"]
    ]
    # A picture that cannot be drawn is logged by its task and fails nothing.
    _publish_reports(load_settings(), forecast_series, None)
    # The run fails with the first failure in pipeline order: an exchange outage
    # before its consequences.
    if errors:
        raise errors[0]
    return summary


@flow(name="backtest")
def backtest(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
    as_of_candles: int = 365,
    last_as_of: dt.date | None = None,
    retrain_every_candles: int | None = None,
    window_candles: int | None = None,
    lookback_candles: int | None = None,
    horizon_candles: int | None = None,
    epochs: int | None = None,
    random_seed: int | None = None,
    report_folder: str | None = None,
) -> list[dict[str, Any]]:
    """Walk each symbol's daily job forward over its past `as_of_candles` candles.

    The metrics of every model go to `backtest_metrics`. The pictures and the
    metrics table are attached to this run as an artifact, and with
    `report_folder` the pictures are kept in that folder too.
    """
    settings = load_settings(
        symbols=symbols,
        exchange=exchange,
        timeframe=timeframe,
        retrain_every_candles=retrain_every_candles,
        window_candles=window_candles,
        lookback_candles=lookback_candles,
        horizon_candles=horizon_candles,
        epochs=epochs,
        random_seed=random_seed,
    )
    prepare_database(settings)

    series_list = _configured_series(settings)
    states = [
        run_backtest(settings, series, as_of_candles, last_as_of, return_state=True)
        for series in series_list
    ]
    results = _results_or_first_error(states, [str(series) for series in series_list])

    _publish_reports(settings, series_list, report_folder)
    return results


def _publish_reports(
    settings: Settings, series_list: list[Series], report_folder: str | None
) -> None:
    """Attach each series' pictures to the flow run, kept in `report_folder` if
    given and in a temporary folder otherwise.

    Raises:
        BtcLstmError: with `report_folder`, a picture could not be written there.
            Without it, a failed picture is only logged by its task run.
    """
    with tempfile.TemporaryDirectory() as temporary:
        folder = report_folder or temporary
        states = [
            publish_report(settings, series, folder, return_state=True)
            for series in series_list
        ]
    if report_folder is not None:
        _results_or_first_error(states, [str(series) for series in series_list])


def summary_markdown(summary: dict[str, Any], errors: Sequence[BaseException]) -> str:
    """Return a Markdown report of one daily run, one table per stage."""
    lines = ["# Daily run", "", "## Candles", ""]
    lines += ["| series | received | new | revised | rejected | newest |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | --- |"]

    for row in summary["ingested"]:
        lines.append(
            f"| {_series_name(row)} | {row['received']} | {row['inserted']} | "
            f"{row['updated']} | {row['rejected']} | {row['last_open_time'] or '-'} |"
        )

    lines += ["", "## Models", "", "| series | model run | trained now | "]
    lines[-1] += "validation MAE ratio to last close, step 1 | gate |"
    lines += ["| --- | ---: | --- | ---: | --- |"]
    for row in summary["trained"]:
        ratio = row["metrics"].get("mae_ratio_to_last_close_step_1")
        lines.append(
            f"| {_series_name(row)} | {row['model_run_id']} | "
            f"{'yes' if row['trained'] else 'no, reused'} | "
            f"{'-' if ratio is None else f'{ratio:.3f}'} | "
            f"{row.get('promotion_reason') or '-'} |"
        )

    lines += ["", "## Forecasts", "", "| series | model run | as of | rows written | "]
    lines[-1] += "forecast of record | demotion |"
    lines += ["| --- | ---: | --- | ---: | --- | --- |"]
    for row in summary["forecasts"]:
        lines.append(
            f"| {_series_name(row)} | {row['model_run_id']} | "
            f"{row['as_of_open_time']} | {row['rows_written']} | "
            f"{row['published_model']} | {row.get('demotion') or '-'} |"
        )

    lines += _missing_lines(summary["ingested"])
    if errors:
        lines += ["", "## Failures", ""]
        for error in errors:
            default = [f"{type(error).__name__}: {error}"]
            lines += [f"- {line}" for line in getattr(error, FAILURE_LINES, default)]
    return "\n".join(lines) + "\n"


def ingest_markdown(results: list[dict[str, Any]], failure_lines: list[str]) -> str:
    """Return a Markdown report of one ingest: counts, missing candles, failures."""
    lines = ["# Ingest", "", "| series | received | new | revised | rejected | "]
    lines[-1] += "refetched | still missing | newest |"
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in results:
        lines.append(
            f"| {_series_name(row)} | {row['received']} | {row['inserted']} | "
            f"{row['updated']} | {row['rejected']} | {row.get('refetched', 0)} | "
            f"{row.get('missing', 0)} | {row['last_open_time'] or '-'} |"
        )
    lines += _missing_lines(results)
    if failure_lines:
        lines += ["", "## Failures", ""]
        lines += [f"- {line}" for line in failure_lines]
    return "\n".join(lines) + "\n"


def _missing_lines(results: list[dict[str, Any]]) -> list[str]:
    """Return a Markdown section on candles still missing after a refetch."""
    incomplete = [row for row in results if row.get("missing", 0)]
    if not incomplete:
        return []
    lines = ["", "## Missing candles", ""]
    for row in incomplete:
        listed = row["missing_open_times"]
        more = row["missing"] - len(listed)
        times = ", ".join(listed) + (f" and {more} more" if more > 0 else "")
        lines.append(
            f"- {_series_name(row)}: {row['missing']} missing, open times {times}"
        )
    return lines


def _failure_lines(outcomes: list[Any], subjects: list[str]) -> list[str]:
    lines = []
    for outcome, subject in zip(outcomes, subjects, strict=True):
        if isinstance(outcome, BaseException):
            message = str(outcome)
            if subject not in message:
                message = f"{subject}: {message}"
            lines.append(f"{type(outcome).__name__}: {message}")
    return lines


def _series_name(row: dict[str, Any]) -> str:
    return f"{row['exchange']} {row['symbol']} {row['timeframe']}"


def fan_out(
    deployment_name: str, symbols: list[str], parameters: dict[str, Any]
) -> dict[str, Any]:
    """Start one deployment run per symbol, wait for all, and fail if any failed.

    The runs are subflows of this one in the Prefect UI. Each is an ordinary
    daily run for one symbol, picked up by whichever worker of the deployment's
    pool is free, so the model of each symbol travels through the database.
    """
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment_name)
        except ObjectNotFound as exc:
            raise FanOutError(
                f"deployment {deployment_name!r} not found on the Prefect server; "
                "create it with `prefect deploy` or `btc-lstm serve`"
            ) from exc
    child_runs = {
        # Called from a synchronous flow, run_deployment returns the FlowRun.
        symbol: cast(
            FlowRun,
            run_deployment(
                deployment_name,
                parameters={**parameters, "symbols": [symbol]},
                flow_run_name=f"daily-{symbol.replace('/', '-').lower()}",
                timeout=0,
            ),
        )
        for symbol in symbols
    }
    logger.info("started %d runs of %s: %s", len(child_runs), deployment_name, symbols)
    finished = _wait_for_runs({symbol: run.id for symbol, run in child_runs.items()})

    failed = {
        symbol: run for symbol, run in finished.items() if run["state"] != "COMPLETED"
    }
    summary = {"runs": finished}
    if failed:
        details = ", ".join(
            f"{symbol} {run['state']}" for symbol, run in failed.items()
        )
        raise FanOutError(
            f"{len(failed)} of {len(finished)} symbol runs of {deployment_name} did "
            f"not complete: {details}; see those flow runs' logs"
        )
    return summary


def _wait_for_runs(run_ids: dict[str, Any]) -> dict[str, dict[str, Any]]:
    finished: dict[str, dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        while len(finished) < len(run_ids):
            for symbol, run_id in run_ids.items():
                if symbol in finished:
                    continue
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    finished[symbol] = {
                        "flow_run_id": str(run_id),
                        "flow_run_name": run.name,
                        "state": run.state.type.value,
                    }
            if len(finished) < len(run_ids):
                time.sleep(FAN_OUT_POLL_SECONDS)
    return finished


def _configured_series(settings: Settings) -> list[Series]:
    return settings.configured_series()


def _run_for_each_series(
    series_task: Task[[Settings, Series], dict[str, Any]], settings: Settings
) -> list[dict[str, Any]]:
    """Run a task once per configured series, one after the other."""
    series_list = _configured_series(settings)
    states = [
        series_task(settings, series, return_state=True) for series in series_list
    ]
    return _results_or_first_error(states, [str(series) for series in series_list])


def _completed_results(state: State[Any]) -> list[dict[str, Any]]:
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        completed: list[dict[str, Any]] = getattr(outcome, COMPLETED_RESULTS, [])
        return completed
    return list(outcome)


def _series_groups(
    results: list[dict[str, Any]],
) -> list[tuple[str, str, list[str]]]:
    symbols_by_source: dict[tuple[str, str], list[str]] = {}
    for result in results:
        key = (result["exchange"], result["timeframe"])
        symbols_by_source.setdefault(key, []).append(result["symbol"])
    return [
        (exchange, timeframe, sorted(set(symbols)))
        for (exchange, timeframe), symbols in symbols_by_source.items()
    ]


def _results_or_first_error(
    states: list[State[Any]], subjects: list[str]
) -> list[dict[str, Any]]:
    """Return the tasks' results, or raise the first failure after logging each."""
    logger = get_run_logger()
    results = []
    errors = []
    outcomes = [state.result(raise_on_failure=False) for state in states]
    for outcome, subject in zip(outcomes, subjects, strict=True):
        if isinstance(outcome, BaseException):
            message = str(outcome)
            if subject not in message:
                message = f"{subject}: {message}"
            logger.error("failed: %s", message)
            errors.append(outcome)
        else:
            results.append(outcome)
    if errors:
        # The caller of a failed subflow gets only the exception, so it carries
        # the results of the tasks that did complete and every failure.
        setattr(errors[0], COMPLETED_RESULTS, results)
        setattr(errors[0], FAILURE_LINES, _failure_lines(outcomes, subjects))
        raise errors[0]
    return results
