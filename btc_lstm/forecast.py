"""Forecast stage: predict the next closes from the newest candles and store them."""

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.candles import Series
from btc_lstm.errors import (
    ForecastError,
    InsufficientHistoryError,
    ModelNotFoundError,
)
from btc_lstm.features import Standardizer, candle_features, require_contiguous
from btc_lstm.store import (
    forecast_exists,
    insert_predictions,
    load_candles,
    load_latest_model_run,
)
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForecastResult:
    """The forecast made for a series and how many of its rows were new."""

    exchange: str
    symbol: str
    timeframe: str
    model_run_id: int
    as_of_open_time: str
    rows_written: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forecast_series(engine: Engine, series: Series) -> ForecastResult:
    """Forecast the closes after the newest stored candle with the newest model run.

    The rows (one per horizon step) are written in one transaction. Forecasting
    again from the same candle with the same model writes nothing new.

    Raises:
        ModelNotFoundError: no model was trained for the series.
        InsufficientHistoryError: fewer than lookback + 1 contiguous candles are
            stored.
    """
    with series_lock(engine, series):
        return _forecast_unless_stored(engine, series)


def _forecast_unless_stored(engine: Engine, series: Series) -> ForecastResult:
    run = load_latest_model_run(engine, series)
    if run is None:
        raise ModelNotFoundError(
            f"{series}: no trained model; run `btc-lstm train` (or the daily job) first"
        )
    lookback = int(run["hyperparameters"]["lookback_candles"])
    horizon = int(run["hyperparameters"]["horizon_candles"])

    candles = load_candles(engine, series, limit=lookback + 1)
    if len(candles) < lookback + 1:
        raise InsufficientHistoryError(
            f"{series}: need {lookback + 1} candles to forecast, found {len(candles)}; "
            "ingest more history first"
        )
    require_contiguous(candles, series, "forecast input")
    as_of = candles["open_time"].iloc[-1]
    if forecast_exists(engine, int(run["id"]), as_of.to_pydatetime()):
        logger.info(
            "%s: forecast from %s by model run %d is already stored",
            series,
            as_of,
            run["id"],
        )
        return _result(series, run, as_of, written=0)
    _warn_if_stale(series, run, as_of)

    predicted_closes = predict_closes(run, candles)
    created_at = dt.datetime.now(dt.UTC)
    step_length = pd.Timedelta(series.timeframe_ms, "ms")
    rows = [
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "timeframe": series.timeframe,
            "as_of_open_time": as_of.to_pydatetime(),
            "target_open_time": (as_of + step * step_length).to_pydatetime(),
            "horizon_step": step,
            "predicted_close": float(close),
            "model_run_id": int(run["id"]),
            "created_at": created_at,
        }
        for step, close in zip(range(1, horizon + 1), predicted_closes, strict=True)
    ]
    written = insert_predictions(engine, rows)
    logger.info(
        "%s: model run %d forecast %d closes after %s: %s",
        series,
        run["id"],
        written,
        as_of,
        ", ".join(f"{close:.6g}" for close in predicted_closes),
    )
    return _result(series, run, as_of, written)


def _result(
    series: Series, run: dict[str, Any], as_of: pd.Timestamp, written: int
) -> ForecastResult:
    return ForecastResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        model_run_id=int(run["id"]),
        as_of_open_time=as_of.isoformat(),
        rows_written=written,
    )


def predict_closes(run: dict[str, Any], candles: pd.DataFrame) -> np.ndarray:
    """Return the closes that a stored model run predicts after the last candle.

    Args:
        run: a `model_runs` row as a dict.
        candles: at least lookback + 1 contiguous candles, oldest first.

    Returns:
        Predicted closes for steps 1..horizon, shape `(horizon,)`.
    """
    from btc_lstm.model import model_from_bytes

    lookback = int(run["hyperparameters"]["lookback_candles"])
    input_scaler = Standardizer.from_dict(run["preprocessing"]["input_scaler"])
    target_scaler = Standardizer.from_dict(run["preprocessing"]["target_scaler"])

    features = candle_features(candles.iloc[-(lookback + 1) :])
    inputs = input_scaler.transform(features)[None, :, :]
    model = model_from_bytes(run["model_archive"])
    scaled = model.predict(inputs, verbose=0)
    log_returns = target_scaler.inverse_transform(scaled)[0]
    last_close = float(candles["close"].iloc[-1])
    # An overflow yields inf, which the check below rejects with a clear message.
    with np.errstate(over="ignore"):
        closes: np.ndarray = last_close * np.exp(log_returns)
    if not (np.all(np.isfinite(closes)) and np.all(closes > 0)):
        raise ForecastError(
            f"model run {run['id']} predicted invalid closes {closes.tolist()}; "
            "nothing was stored. Retrain with `btc-lstm train` and forecast again"
        )
    return closes


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
