"""Forecast stage: predict the next closes from the newest candles and store them."""

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.baselines import LAST_CLOSE, baseline_forecasts, season_candles
from btc_lstm.candles import Series
from btc_lstm.errors import (
    ForecastError,
    InsufficientHistoryError,
    ModelNotFoundError,
)
from btc_lstm.features import candle_features, require_contiguous
from btc_lstm.gating import demotion_decision
from btc_lstm.scoring import interval_columns
from btc_lstm.store import (
    demote_model_run,
    forecast_exists,
    insert_predictions,
    load_candles,
    load_latest_model_run,
    load_live_lstm_errors,
    load_published_model_run,
)
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)

# Past forecasts that calibrate a baseline's intervals when the model run does
# not say how many validation samples it had.
DEFAULT_CALIBRATION_FORECASTS = 100


@dataclass(frozen=True)
class ForecastResult:
    """The forecasts made for a series, which one is of record, and how many rows
    were new."""

    exchange: str
    symbol: str
    timeframe: str
    model_run_id: int
    as_of_open_time: str
    rows_written: int
    published_model: str
    demotion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forecast_series(
    engine: Engine, series: Series, live_error_candles: int = 30
) -> ForecastResult:
    """Forecast the closes after the newest stored candle, by every model.

    The newest LSTM run, the published LSTM run when it is an older one, and the
    baselines each write one row per horizon step, with 80% and 95% intervals,
    in one transaction. The published model's rows are flagged as the forecast of
    record; before that, a published LSTM whose live error over the newest
    `live_error_candles` scored forecasts is worse than last close's is demoted.
    Forecasting again from the same candle with the same model writes nothing.

    Raises:
        ModelNotFoundError: no model was trained for the series.
        InsufficientHistoryError: fewer than lookback + 1 contiguous candles are
            stored.
    """
    with series_lock(engine, series):
        return _forecast_unless_stored(engine, series, live_error_candles)


def _forecast_unless_stored(
    engine: Engine, series: Series, live_error_candles: int
) -> ForecastResult:
    run = load_latest_model_run(engine, series)
    if run is None:
        raise ModelNotFoundError(
            f"{series}: no trained model; run `btc-lstm train` (or the daily job) first"
        )
    hyperparameters = run["hyperparameters"]
    lookback = int(hyperparameters["lookback_candles"])
    window_candles = int(hyperparameters["window_candles"])

    candles = load_candles(engine, series, limit=max(window_candles, lookback + 1))
    if len(candles) < lookback + 1:
        raise InsufficientHistoryError(
            f"{series}: need {lookback + 1} candles to forecast, found {len(candles)}; "
            "ingest more history first"
        )
    require_contiguous(candles.iloc[-(lookback + 1) :], series, "forecast input")
    as_of = candles["open_time"].iloc[-1]
    if forecast_exists(engine, int(run["id"]), as_of.to_pydatetime()):
        logger.info(
            "%s: forecast from %s by model run %d is already stored",
            series,
            as_of,
            run["id"],
        )
        published = load_published_model_run(engine, series)
        return _result(series, run, as_of, 0, _model_name(published))
    _warn_if_stale(series, run, as_of)

    published, demotion = _published_after_live_check(
        engine, series, live_error_candles
    )
    runs_to_forecast = [run]
    if published is not None and published["id"] != run["id"]:
        runs_to_forecast.append(published)

    created_at = dt.datetime.now(dt.UTC)
    rows = []
    for model_run in runs_to_forecast:
        closes = predict_closes(model_run, candles)
        rows += prediction_rows(
            series,
            as_of,
            model="lstm",
            model_run_id=int(model_run["id"]),
            closes=closes,
            intervals=model_run["metrics"].get("interval_log_halfwidths"),
            published=published is not None and model_run["id"] == published["id"],
            created_at=created_at,
        )
        logger.info(
            "%s: model run %d forecast the closes after %s: %s",
            series,
            model_run["id"],
            as_of,
            ", ".join(f"{close:.6g}" for close in closes),
        )

    rows += _baseline_rows(series, run, candles, published is None, created_at)
    written = insert_predictions(engine, rows)
    logger.info(
        "%s: wrote %d forecast rows after %s; the forecast of record is %s's",
        series,
        written,
        as_of,
        _model_name(published),
    )
    return _result(series, run, as_of, written, _model_name(published), demotion)


def _published_after_live_check(
    engine: Engine, series: Series, live_error_candles: int
) -> tuple[dict[str, Any] | None, str | None]:
    """Return the published LSTM run, after demoting it if its live error is worse
    than last close's, and the reason of such a demotion."""
    published = load_published_model_run(engine, series)
    if published is None:
        return None, None
    live = load_live_lstm_errors(engine, series, live_error_candles)
    decision = demotion_decision(live, live_error_candles)
    if not decision.passed:
        return published, None
    demote_model_run(engine, int(published["id"]), decision.reason)
    logger.warning(
        "%s: model run %d is no longer published, %s; last close is the forecast "
        "of record until a retrained model earns it",
        series,
        published["id"],
        decision.reason,
    )
    return None, decision.reason


def _baseline_rows(
    series: Series,
    run: dict[str, Any],
    candles: pd.DataFrame,
    last_close_published: bool,
    created_at: dt.datetime,
) -> list[dict[str, Any]]:
    hyperparameters = run["hyperparameters"]
    contiguous = contiguous_tail(candles, series.timeframe_ms)
    forecasts = baseline_forecasts(
        contiguous["close"].to_numpy(dtype="float64"),
        horizon=int(hyperparameters["horizon_candles"]),
        window_candles=int(hyperparameters["window_candles"]),
        season=season_candles(series.timeframe_ms),
        calibration_forecasts=int(run["metrics"].get("validation_samples", 0))
        or DEFAULT_CALIBRATION_FORECASTS,
    )
    rows = []
    for model, (closes, intervals) in forecasts.items():
        rows += prediction_rows(
            series,
            candles["open_time"].iloc[-1],
            model=model,
            model_run_id=None,
            closes=closes,
            intervals=intervals,
            published=last_close_published and model == LAST_CLOSE,
            created_at=created_at,
        )
    return rows


def prediction_rows(
    series: Series,
    as_of: pd.Timestamp,
    model: str,
    model_run_id: int | None,
    closes: np.ndarray,
    intervals: dict[str, list[float]] | None,
    published: bool,
    created_at: dt.datetime,
) -> list[dict[str, Any]]:
    """Return the `predictions` rows of one model's forecast from one candle."""
    step_length = pd.Timedelta(series.timeframe_ms, "ms")
    bounds = interval_columns(closes, intervals) if intervals else {}
    return [
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "timeframe": series.timeframe,
            "model": model,
            "model_run_id": model_run_id,
            "as_of_open_time": as_of.to_pydatetime(),
            "target_open_time": (as_of + step * step_length).to_pydatetime(),
            "horizon_step": step,
            "predicted_close": float(close),
            **{name: float(values[index]) for name, values in bounds.items()},
            "published": published,
            "created_at": created_at,
        }
        for index, (step, close) in enumerate(
            zip(range(1, len(closes) + 1), closes, strict=True)
        )
    ]


def _model_name(published: dict[str, Any] | None) -> str:
    return LAST_CLOSE if published is None else f"lstm (model run {published['id']})"


def _result(
    series: Series,
    run: dict[str, Any],
    as_of: pd.Timestamp,
    written: int,
    published_model: str,
    demotion: str | None = None,
) -> ForecastResult:
    return ForecastResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        model_run_id=int(run["id"]),
        as_of_open_time=as_of.isoformat(),
        rows_written=written,
        published_model=published_model,
        demotion=demotion,
    )


def predict_closes(run: dict[str, Any], candles: pd.DataFrame) -> np.ndarray:
    """Return the closes that a stored model run predicts after the last candle.

    Args:
        run: a `model_runs` row as a dict.
        candles: at least lookback + 1 contiguous candles, oldest first.

    Returns:
        Predicted closes for steps 1..horizon, shape `(horizon,)`.
    """
    from btc_lstm.model import model_from_bytes, predict_log_returns

    lookback = int(run["hyperparameters"]["lookback_candles"])
    features = candle_features(candles.iloc[-(lookback + 1) :])
    model = model_from_bytes(run["model_archive"])
    log_returns = predict_log_returns(model, run["preprocessing"], features[None])[0]
    return closes_from_log_returns(
        float(candles["close"].iloc[-1]), log_returns, f"model run {run['id']}"
    )


def closes_from_log_returns(
    last_close: float, log_returns: np.ndarray, source: str
) -> np.ndarray:
    """Return last_close * exp(log_returns), checked to be finite and positive.

    Raises:
        ForecastError: a close overflowed or is not positive.
    """
    # An overflow yields inf, which the check below rejects with a clear message.
    with np.errstate(over="ignore"):
        closes: np.ndarray = last_close * np.exp(log_returns)
    if not (np.all(np.isfinite(closes)) and np.all(closes > 0)):
        raise ForecastError(
            f"{source} predicted invalid closes {closes.tolist()}; "
            "nothing was stored. Retrain with `btc-lstm train` and forecast again"
        )
    return closes


def contiguous_tail(candles: pd.DataFrame, timeframe_ms: int) -> pd.DataFrame:
    """Return the newest candles that follow each other without a gap."""
    steps = candles["open_time"].diff() != pd.Timedelta(timeframe_ms, "ms")
    last_break = int(np.flatnonzero(steps.to_numpy())[-1])
    return candles.iloc[last_break:]


def _warn_if_stale(series: Series, run: dict[str, Any], as_of: pd.Timestamp) -> None:
    behind = (as_of - run["window_end_open_time"]) // pd.Timedelta(
        series.timeframe_ms, "ms"
    )
    if behind > 0:
        logger.warning(
            "%s: model run %d was trained on candles up to %s, %d candles before the "
            "forecast's last candle; retrain to use them",
            series,
            run["id"],
            run["window_end_open_time"],
            behind,
        )
