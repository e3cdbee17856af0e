"""The flows `ingest`, `train`, `forecast` and `daily`, which runs the three in order.

Each flow loops over its symbols so that one symbol's failure does not stop the
others. The flow still fails at the end, with the first error as its reason.
The database URL is never a flow parameter, so its password never reaches the
Prefect API: it comes from BTC_LSTM_DATABASE_URL.
"""

import datetime as dt
from collections.abc import Sequence
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State

from btc_lstm.candles import Series
from btc_lstm.settings import Settings, load_settings
from flows.tasks import (
    fetch_candles,
    import_candle_csv,
    prepare_database,
    retry_delays_seconds,
    train_model,
    write_forecast,
)

COMPLETED_RESULTS = "btc_lstm_completed_results"


@flow(name="ingest")
def ingest(
    symbols: list[str] | None = None,
    exchange: str | None = None,
    timeframe: str | None = None,
    csv_paths: list[str] | None = None,
    history_start: dt.date | None = None,
    ccxt_config: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Store new closed candles from the exchange, or from CSV files when given.

    Keep secrets such as API keys out of `ccxt_config` here, because Prefect
    stores flow parameters; put them in BTC_LSTM_CCXT_CONFIG on the worker.
    """
    settings = load_settings(
        symbols=symbols,
        exchange=exchange,
        timeframe=timeframe,
        history_start=history_start,
        ccxt_config=ccxt_config,
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
    return _run_for_each_series(fetch, settings)


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
) -> dict[str, Any]:
    """Ingest, train and forecast, in that order.

    With `csv_paths`, the candles come from those files and the series to train
    and forecast are the files' own. A series whose ingest failed is neither
    trained nor forecast, and the run ends as failed with the first error.
    """
    ingest_state = ingest(
        symbols,
        exchange,
        timeframe,
        csv_paths,
        history_start,
        ccxt_config,
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
    # The run fails with the first failure in pipeline order: an exchange outage
    # before its consequences.
    if errors:
        raise errors[0]
    return summary


def summary_markdown(summary: dict[str, Any], errors: Sequence[BaseException]) -> str:
    """Return a Markdown report of one daily run, one table per stage."""
    lines = ["# Daily run", "", "## Candles", ""]
    lines += ["| series | received | new | revised | invalid | newest |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in summary["ingested"]:
        lines.append(
            f"| {_series_name(row)} | {row['received']} | {row['inserted']} | "
            f"{row['updated']} | {row['invalid']} | {row['last_open_time'] or '-'} |"
        )
    lines += ["", "## Models", "", "| series | model run | trained now | "]
    lines[-1] += "validation MAE ratio to last close, step 1 |"
    lines += ["| --- | ---: | --- | ---: |"]
    for row in summary["trained"]:
        ratio = row["metrics"].get("mae_ratio_to_last_close_step_1")
        lines.append(
            f"| {_series_name(row)} | {row['model_run_id']} | "
            f"{'yes' if row['trained'] else 'no, reused'} | "
            f"{'-' if ratio is None else f'{ratio:.3f}'} |"
        )
    lines += ["", "## Forecasts", "", "| series | model run | as of | rows written |"]
    lines += ["| --- | ---: | --- | ---: |"]
    for row in summary["forecasts"]:
        lines.append(
            f"| {_series_name(row)} | {row['model_run_id']} | "
            f"{row['as_of_open_time']} | {row['rows_written']} |"
        )
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- {type(error).__name__}: {error}" for error in errors]
    return "\n".join(lines) + "\n"


def _series_name(row: dict[str, Any]) -> str:
    return f"{row['exchange']} {row['symbol']} {row['timeframe']}"


def _run_for_each_series(
    series_task: Task[[Settings, Series], dict[str, Any]], settings: Settings
) -> list[dict[str, Any]]:
    """Run a task once per configured series, one after the other."""
    series_list = [
        Series(settings.exchange, symbol, settings.timeframe)
        for symbol in settings.symbols
    ]
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
    for state, subject in zip(states, subjects, strict=True):
        outcome = state.result(raise_on_failure=False)
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
        # the results of the tasks that did complete.
        setattr(errors[0], COMPLETED_RESULTS, results)
        raise errors[0]
    return results
