"""Train stage: fit the LSTM on the rolling window of stored candles, save the run."""

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.candles import Series
from btc_lstm.errors import InsufficientHistoryError, TrainingError
from btc_lstm.features import (
    FEATURE_NAMES,
    Standardizer,
    Windows,
    build_windows,
    require_contiguous,
)
from btc_lstm.gating import Decision, promotion_decision
from btc_lstm.scoring import INTERVAL_LEVELS, conformal_halfwidths
from btc_lstm.settings import (
    MINIMUM_TRAINING_SAMPLES,
    Settings,
    minimum_window_candles,
    validation_sample_count,
)
from btc_lstm.store import (
    count_candles,
    find_model_run,
    insert_model_run,
    load_candles,
    load_published_model_run,
)
from btc_lstm.store.connection import series_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The model run that now serves a series, and whether it was trained just now."""

    exchange: str
    symbol: str
    timeframe: str
    model_run_id: int
    trained: bool
    window_end_open_time: str
    metrics: dict[str, Any]
    promoted: bool | None = None
    promotion_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_hyperparameters(settings: Settings) -> dict[str, Any]:
    """Return the settings that define a model, as stored in `model_runs`."""
    return {
        "window_candles": settings.window_candles,
        "lookback_candles": settings.lookback_candles,
        "horizon_candles": settings.horizon_candles,
        "features": FEATURE_NAMES,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lstm_units": settings.lstm_units,
        "lstm_layers": settings.lstm_layers,
        "bidirectional": settings.bidirectional,
        "dropout": settings.dropout,
        "learning_rate": settings.learning_rate,
        "validation_fraction": settings.validation_fraction,
        "early_stopping_patience": settings.early_stopping_patience,
        "random_seed": settings.random_seed,
    }


def load_training_window(
    engine: Engine, series: Series, window_candles: int
) -> pd.DataFrame:
    """Return the newest `window_candles` stored candles, checked to be complete.

    Raises:
        InsufficientHistoryError: fewer candles are stored, or some are missing
            inside the window.
    """
    candles = load_candles(engine, series, limit=window_candles)
    if len(candles) < window_candles:
        stored = count_candles(engine, series)
        raise InsufficientHistoryError(
            f"need {window_candles} closed {series.timeframe} candles of "
            f"{series.exchange} {series.symbol} to train, found {stored}; ingest "
            "more history (an earlier BTC_LSTM_HISTORY_START, or a file that goes "
            "further back) or lower BTC_LSTM_WINDOW_CANDLES"
        )
    require_contiguous(candles, series, "training")
    return candles


def train_series(engine: Engine, settings: Settings, series: Series) -> TrainResult:
    """Train a model on the newest window of a series, unless one already exists.

    A model run trained on the same last candle with the same hyperparameters is
    reused instead, so running the daily job twice trains once.

    Concurrent calls for the same series run one after the other, so the second
    finds the first one's model run instead of training a duplicate.

    Raises:
        InsufficientHistoryError: the window is not fully stored.
    """
    with series_lock(engine, series):
        return _train_unless_trained(engine, settings, series)


def _train_unless_trained(
    engine: Engine, settings: Settings, series: Series
) -> TrainResult:
    candles = load_training_window(engine, series, settings.window_candles)
    window_end = candles["open_time"].iloc[-1].to_pydatetime()
    hyperparameters = model_hyperparameters(settings)

    existing_id = find_model_run(engine, series, window_end, hyperparameters)
    if existing_id is not None:
        logger.info(
            "%s: model run %d already covers the window ending %s, not retraining",
            series,
            existing_id,
            window_end,
        )
        return TrainResult(
            exchange=series.exchange,
            symbol=series.symbol,
            timeframe=series.timeframe,
            model_run_id=existing_id,
            trained=False,
            window_end_open_time=window_end.isoformat(),
            metrics={},
        )

    started = time.perf_counter()
    fitted = fit_model(candles, settings)
    training_seconds = time.perf_counter() - started

    from btc_lstm.model import KERAS_VERSION, model_from_bytes, model_to_bytes

    published_run = load_published_model_run(engine, series)
    published = None
    if published_run is not None:
        published = PublishedModel(
            name=f"published model run {published_run['id']}",
            model=model_from_bytes(published_run["model_archive"]),
            preprocessing=published_run["preprocessing"],
            hyperparameters=published_run["hyperparameters"],
        )
    decision = gate_candidate(
        fitted, hyperparameters, published, settings.promotion_margin
    )

    run_id = insert_model_run(
        engine,
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "timeframe": series.timeframe,
            "created_at": dt.datetime.now(dt.UTC),
            "window_start_open_time": candles["open_time"].iloc[0].to_pydatetime(),
            "window_end_open_time": window_end,
            "candle_count": len(candles),
            "hyperparameters": hyperparameters,
            "preprocessing": fitted.preprocessing,
            "metrics": fitted.metrics,
            "epochs_trained": fitted.epochs_trained,
            "training_seconds": round(training_seconds, 3),
            "keras_version": KERAS_VERSION,
            "model_archive": model_to_bytes(fitted.model),
            "promoted": decision.passed,
            "promotion_reason": decision.reason,
        },
    )
    logger.info(
        "%s: model run %d trained on %d candles (%s..%s) in %.1f s, %d epochs; "
        "validation MAE at step 1 is %.4g vs %.4g for last close (ratio %s)",
        series,
        run_id,
        len(candles),
        candles["open_time"].iloc[0].date(),
        window_end.date(),
        training_seconds,
        fitted.epochs_trained,
        fitted.metrics["mae_by_step"][0],
        fitted.metrics["last_close_mae_by_step"][0],
        _format_ratio(fitted.metrics["mae_ratio_to_last_close_step_1"]),
    )
    logger.info("%s: model run %d %s", series, run_id, decision.reason)
    return TrainResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        model_run_id=run_id,
        trained=True,
        window_end_open_time=window_end.isoformat(),
        metrics=fitted.metrics,
        promoted=decision.passed,
        promotion_reason=decision.reason,
    )


def _format_ratio(ratio: float | None) -> str:
    return "undefined" if ratio is None else f"{ratio:.3f}"


@dataclass
class FittedModel:
    """A trained Keras model with what is needed to use and judge it.

    Attributes:
        validation: the held-out samples, unscaled, that the metrics come from.
    """

    model: Any
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    epochs_trained: int
    validation: Windows


@dataclass(frozen=True)
class PublishedModel:
    """The model whose forecasts are published now, which a candidate must match."""

    name: str
    model: Any
    preprocessing: dict[str, Any]
    hyperparameters: dict[str, Any]
    intervals: dict[str, list[float]] | None = None


def gate_candidate(
    fitted: FittedModel,
    hyperparameters: dict[str, Any],
    published: PublishedModel | None,
    margin: float,
) -> Decision:
    """Decide whether a freshly fitted model becomes the published one.

    It is compared on its own validation samples with last close and, when its
    inputs and outputs have the same shape, with the published model.
    """
    references = {"last close": fitted.metrics["last_close_mae_by_step"]}
    if published is not None:
        same_shape = all(
            published.hyperparameters.get(name) == hyperparameters[name]
            for name in ["lookback_candles", "horizon_candles", "features"]
        )
        if same_shape:
            from btc_lstm.model import predict_log_returns

            predicted = predict_log_returns(
                published.model, published.preprocessing, fitted.validation.inputs
            )
            references[published.name] = price_mae_by_step(
                fitted.validation, predicted
            ).tolist()
    return promotion_decision(fitted.metrics["mae_by_step"], references, margin)


def split_sample_count(
    sample_count: int, validation_fraction: float, horizon: int
) -> tuple[int, int]:
    """Return (training samples, first validation sample) of a chronological split.

    The newest samples are held out for validation. The `horizon` samples before
    them are dropped, because their targets would reach into the validation
    period.
    """
    validation_count = validation_sample_count(sample_count, validation_fraction)
    training_count = sample_count - validation_count - horizon
    if training_count < MINIMUM_TRAINING_SAMPLES:
        raise InsufficientHistoryError(
            f"only {training_count} training samples after holding out "
            f"{validation_count} for validation; need at least "
            f"{MINIMUM_TRAINING_SAMPLES}, so use a longer window"
        )
    return training_count, sample_count - validation_count


def fit_model(candles: pd.DataFrame, settings: Settings) -> FittedModel:
    """Fit the LSTM on contiguous candles with a chronological validation split.

    The standardizers are fitted on the training samples only, and early stopping
    restores the weights of the epoch with the lowest validation loss.
    """
    import keras

    from btc_lstm.model import build_model, seed_everything

    lookback = settings.lookback_candles
    horizon = settings.horizon_candles
    minimum = minimum_window_candles(lookback, horizon, settings.validation_fraction)
    if len(candles) < minimum:
        raise InsufficientHistoryError(
            f"need at least {minimum} candles for "
            f"lookback {lookback} and horizon {horizon}, got {len(candles)}"
        )
    windows = build_windows(candles, lookback, horizon)
    training_count, validation_start = split_sample_count(
        len(windows.targets), settings.validation_fraction, horizon
    )
    # Training inputs cover feature rows 0 .. training_count + lookback - 2.
    training_rows = windows.inputs[:training_count].reshape(-1, len(FEATURE_NAMES))
    input_scaler = Standardizer.fit(training_rows)
    target_scaler = Standardizer.fit(windows.targets[:training_count])

    scaled_inputs = input_scaler.transform(windows.inputs)
    scaled_targets = target_scaler.transform(windows.targets)

    seed_everything(settings.random_seed)
    model = build_model(
        lookback=lookback,
        feature_count=len(FEATURE_NAMES),
        horizon=horizon,
        lstm_units=settings.lstm_units,
        dropout=settings.dropout,
        learning_rate=settings.learning_rate,
        lstm_layers=settings.lstm_layers,
        bidirectional=settings.bidirectional,
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=settings.early_stopping_patience,
        restore_best_weights=True,
    )
    history = model.fit(
        scaled_inputs[:training_count],
        scaled_targets[:training_count],
        validation_data=(
            scaled_inputs[validation_start:],
            scaled_targets[validation_start:],
        ),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        callbacks=[early_stopping],
        verbose=0,
    )

    predicted = target_scaler.inverse_transform(
        model.predict(scaled_inputs[validation_start:], verbose=0)
    )
    best_validation_loss = float(np.nanmin(history.history["val_loss"]))
    require_finite_training(predicted, best_validation_loss, settings.learning_rate)
    validation = windows.sliced(validation_start)
    metrics = validation_metrics(validation, predicted)
    metrics["training_samples"] = training_count
    metrics["validation_loss"] = best_validation_loss
    # Split conformal: the validation samples were not trained on, so their
    # errors calibrate the intervals. Early stopping did look at them, which can
    # make the intervals slightly narrow; the backtest measures their coverage.
    metrics["interval_log_halfwidths"] = {
        str(level): conformal_halfwidths(validation.targets - predicted, level)
        for level in INTERVAL_LEVELS
    }
    return FittedModel(
        model=model,
        preprocessing={
            "features": FEATURE_NAMES,
            "input_scaler": input_scaler.to_dict(),
            "target_scaler": target_scaler.to_dict(),
        },
        metrics=metrics,
        epochs_trained=len(history.history["loss"]),
        validation=validation,
    )


def require_finite_training(
    predicted_log_returns: np.ndarray, best_validation_loss: float, learning_rate: float
) -> None:
    """Check that training converged to finite validation loss and predictions.

    Raises:
        TrainingError: the loss or a prediction is infinite or NaN.
    """
    finite = np.isfinite(predicted_log_returns).all() and np.isfinite(
        best_validation_loss
    )
    if not finite:
        raise TrainingError(
            f"training diverged: best validation loss {best_validation_loss}, "
            "predictions not finite; nothing was stored. Lower "
            f"BTC_LSTM_LEARNING_RATE (now {learning_rate}) and train again"
        )


def price_mae_by_step(
    validation: Windows, predicted_log_returns: np.ndarray
) -> np.ndarray:
    """Return the MAE in price units at each step of predicted log returns."""
    anchors = validation.anchor_closes[:, None]
    actual = anchors * np.exp(validation.targets)
    with np.errstate(over="ignore"):
        predicted = anchors * np.exp(predicted_log_returns)
    mae: np.ndarray = np.abs(predicted - actual).mean(axis=0)
    return mae


def validation_metrics(
    validation: Windows, predicted_log_returns: np.ndarray
) -> dict[str, Any]:
    """Return the model's and the last-close baseline's MAE in price units, by step.

    The last-close baseline forecasts every future close as the anchor's close.
    """
    anchors = validation.anchor_closes[:, None]
    actual = anchors * np.exp(validation.targets)
    model_mae = price_mae_by_step(validation, predicted_log_returns)
    last_close_mae = np.abs(anchors - actual).mean(axis=0)
    if not np.isfinite(model_mae).all():
        # JSON columns cannot store inf, and such a model is of no use.
        raise TrainingError(
            "training diverged: validation predictions overflow to infinite "
            "prices; nothing was stored. Lower BTC_LSTM_LEARNING_RATE and train again"
        )
    return {
        "validation_samples": int(len(anchors)),
        "mae_by_step": [float(value) for value in model_mae],
        "last_close_mae_by_step": [float(value) for value in last_close_mae],
        "mae_ratio_to_last_close_step_1": _ratio(model_mae[0], last_close_mae[0]),
        "mae_ratio_to_last_close_all_steps": _ratio(
            model_mae.mean(), last_close_mae.mean()
        ),
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    # None rather than inf or NaN, which JSON columns cannot store.
    return float(numerator / denominator) if denominator > 0 else None
