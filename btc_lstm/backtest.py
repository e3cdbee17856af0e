"""Backtest stage: replay the daily job over past candles and score every model.

The walk forward retrains the LSTM every `retrain_every_candles` candles on the
same rolling window as the daily job, gates it the same way, and forecasts from
every as-of candle with the newest model, the published one and the baselines.
A forecast made as of candle t reads only candles up to t: its model was trained
on a window ending at or before t, and its intervals, baselines and the live
error check use closes up to t.
"""

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.baselines import (
    LAST_CLOSE,
    baseline_forecasts,
    season_candles,
)
from btc_lstm.candles import Series
from btc_lstm.errors import ConfigError, InsufficientHistoryError
from btc_lstm.features import candle_features, require_contiguous
from btc_lstm.gating import demotion_decision
from btc_lstm.scoring import interval_columns, naive_scale, score_forecasts
from btc_lstm.settings import Settings
from btc_lstm.store import insert_backtest, load_candles
from btc_lstm.train import (
    FittedModel,
    PublishedModel,
    fit_model,
    gate_candidate,
    model_hyperparameters,
)

logger = logging.getLogger(__name__)

LSTM = "lstm"
# The forecast of record: the published LSTM's, or last close's without one.
PUBLISHED = "published"


@dataclass(frozen=True)
class BacktestResult:
    """The stored backtest's id, range, retrain counts and step-1 scores."""

    exchange: str
    symbol: str
    timeframe: str
    backtest_run_id: int
    first_as_of_open_time: str
    last_as_of_open_time: str
    forecasts: int
    retrain_count: int
    promotions: int
    demotions: int
    seconds: float
    step_1: dict[str, dict[str, float | None]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backtest_series(
    engine: Engine,
    settings: Settings,
    series: Series,
    as_of_candles: int = 365,
    last_as_of: dt.date | None = None,
) -> BacktestResult:
    """Walk forward over `as_of_candles` as-of candles and store the scores.

    Args:
        as_of_candles: how many consecutive candles to forecast from.
        last_as_of: the day of the last as-of candle; by default the newest candle
            whose targets are all stored.

    Raises:
        InsufficientHistoryError: the stored candles do not cover a training
            window before the first as-of candle and the targets after the last,
            without gaps.
    """
    if as_of_candles < 1:
        raise ConfigError(
            f"a backtest needs at least 1 as-of candle, got {as_of_candles}; "
            "pass --candles 1 or more"
        )
    started = time.perf_counter()
    candles = load_candles(engine, series)
    anchors = _as_of_indices(candles, settings, series, as_of_candles, last_as_of)
    first_used = anchors[0] - settings.window_candles + 1
    last_used = anchors[-1] + settings.horizon_candles
    require_contiguous(candles.iloc[first_used : last_used + 1], series, "backtest")

    walk = _WalkForward(candles, settings, series)
    for block_start in range(0, len(anchors), settings.retrain_every_candles):
        block = anchors[block_start : block_start + settings.retrain_every_candles]
        walk.retrain(block)
        for anchor in block:
            walk.forecast(int(anchor))

    forecasts = pd.DataFrame(walk.records)
    metrics = score_forecasts(forecasts, reference=LAST_CLOSE)
    seconds = time.perf_counter() - started
    first_time = candles["open_time"].iloc[anchors[0]]
    last_time = candles["open_time"].iloc[anchors[-1]]
    run_id = insert_backtest(
        engine,
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "timeframe": series.timeframe,
            "created_at": dt.datetime.now(dt.UTC),
            "first_as_of_open_time": first_time.to_pydatetime(),
            "last_as_of_open_time": last_time.to_pydatetime(),
            "retrain_every_candles": settings.retrain_every_candles,
            "hyperparameters": model_hyperparameters(settings),
            "retrain_count": walk.retrain_count,
            "seconds": round(seconds, 3),
        },
        metrics,
        forecasts,
    )
    step_1 = {
        row["model"]: {
            "mae_ratio_to_last_close": row["mae_ratio_to_last_close"],
            "directional_accuracy": _optional(row["directional_accuracy"]),
            "coverage_80": _optional(row["coverage_80"]),
            "coverage_95": _optional(row["coverage_95"]),
        }
        for row in metrics[metrics["horizon_step"] == 1].to_dict("records")
    }
    logger.info(
        "%s: backtest %d forecast from %d candles (%s..%s), %d retrains, %d "
        "promotions, %d demotions, in %.0f s; step-1 MAE ratio to last close: %s",
        series,
        run_id,
        len(anchors),
        first_time.date(),
        last_time.date(),
        walk.retrain_count,
        walk.promotions,
        walk.demotions,
        seconds,
        ", ".join(
            f"{model} {_format(values['mae_ratio_to_last_close'])}"
            for model, values in step_1.items()
        ),
    )
    return BacktestResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        backtest_run_id=run_id,
        first_as_of_open_time=first_time.isoformat(),
        last_as_of_open_time=last_time.isoformat(),
        forecasts=len(forecasts),
        retrain_count=walk.retrain_count,
        promotions=walk.promotions,
        demotions=walk.demotions,
        seconds=round(seconds, 3),
        step_1=step_1,
    )


def _optional(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _format(value: float | None) -> str:
    return "undefined" if value is None or pd.isna(value) else f"{value:.3f}"


def _as_of_indices(
    candles: pd.DataFrame,
    settings: Settings,
    series: Series,
    as_of_candles: int,
    last_as_of: dt.date | None,
) -> np.ndarray:
    horizon = settings.horizon_candles
    last_index = len(candles) - 1 - horizon
    available = len(candles)
    if last_as_of is not None:
        end = pd.Timestamp(last_as_of, tz="UTC") + pd.Timedelta(days=1)
        through_last_as_of = int((candles["open_time"] < end).sum())
        last_index = min(last_index, through_last_as_of - 1)
        available = min(available, through_last_as_of + horizon)
    first_index = last_index - as_of_candles + 1
    # The first as-of candle is the last candle of its training window.
    needed = settings.window_candles + as_of_candles - 1 + horizon
    if first_index < settings.window_candles - 1:
        raise InsufficientHistoryError(
            f"{series}: a backtest over {as_of_candles} candles needs {needed} "
            f"stored candles up to the last as-of candle's targets (a "
            f"{settings.window_candles}-candle window ending at the first as-of "
            f"candle, the other as-of candles and {horizon} targets), found "
            f"{available}; import more history or backtest fewer candles"
        )
    return np.arange(first_index, last_index + 1)


class _WalkForward:
    """The state of a backtest between as-of candles: the newest and published
    models, and the forecasts made so far."""

    def __init__(self, candles: pd.DataFrame, settings: Settings, series: Series):
        self.candles = candles
        self.settings = settings
        self.series = series
        self.closes = candles["close"].to_numpy(dtype="float64")
        self.features = candle_features(candles)
        self.season = season_candles(series.timeframe_ms)
        self.hyperparameters = model_hyperparameters(settings)
        self.newest: FittedModel | None = None
        self.newest_closes: dict[int, np.ndarray] = {}
        self.published_closes: dict[int, np.ndarray] = {}
        self.published: PublishedModel | None = None
        self.records: list[dict[str, Any]] = []
        # Step-1 LSTM errors by target index, for the live demotion check.
        self.live_errors: dict[int, tuple[float, float]] = {}
        self.retrain_count = 0
        self.promotions = 0
        self.demotions = 0

    def retrain(self, block: np.ndarray) -> None:
        """Fit on the window ending at the block's first candle and gate the model,
        as the daily job does, then predict from every candle of the block."""
        anchor = int(block[0])
        window = self.candles.iloc[
            anchor - self.settings.window_candles + 1 : anchor + 1
        ]
        fitted = fit_model(window.reset_index(drop=True), self.settings)

        decision = gate_candidate(
            fitted,
            self.hyperparameters,
            self.published,
            self.settings.promotion_margin,
        )
        self.retrain_count += 1
        self.newest = fitted
        if decision.passed:
            self.promotions += 1
            self.published = PublishedModel(
                name=f"model trained as of {self._day(anchor)}",
                model=fitted.model,
                preprocessing=fitted.preprocessing,
                hyperparameters=self.hyperparameters,
                intervals=fitted.metrics["interval_log_halfwidths"],
            )
        logger.debug("%s: model as of %s %s", self.series, self._day(anchor), decision)

        # The models do not change inside the block, so their forecasts from all of
        # its candles come from one batch each.
        self.newest_closes = self._lstm_closes(
            fitted.model, fitted.preprocessing, block
        )
        self.published_closes = (
            self._lstm_closes(self.published.model, self.published.preprocessing, block)
            if self.published is not None
            else {}
        )

    def forecast(self, anchor: int) -> None:
        """Forecast from `anchor` with every model and record the outcomes."""
        assert self.newest is not None
        self._demote_if_worse_live(anchor)
        window_start = anchor - self.settings.window_candles + 1
        closes = self.closes[window_start : anchor + 1]
        scale = naive_scale(closes)

        newest_closes = self.newest_closes[anchor]
        self._record(
            LSTM,
            anchor,
            newest_closes,
            self.newest.metrics["interval_log_halfwidths"],
            scale,
        )
        horizon = self.settings.horizon_candles
        if anchor + 1 <= len(self.closes) - 1:
            self.live_errors[anchor + 1] = (
                abs(newest_closes[0] - self.closes[anchor + 1]),
                abs(self.closes[anchor] - self.closes[anchor + 1]),
            )

        baselines = baseline_forecasts(
            closes,
            horizon=horizon,
            window_candles=self.settings.window_candles,
            season=self.season,
            calibration_forecasts=int(self.newest.metrics["validation_samples"]),
        )
        for model, (baseline, intervals) in baselines.items():
            self._record(model, anchor, baseline, intervals, scale)

        if self.published is None:
            published, intervals = baselines[LAST_CLOSE]
        else:
            published = self.published_closes[anchor]
            intervals = self.published.intervals
        self._record(PUBLISHED, anchor, published, intervals, scale)

    def _demote_if_worse_live(self, anchor: int) -> None:
        if self.published is None:
            return
        scored = [
            (target, errors)
            for target, errors in self.live_errors.items()
            if target <= anchor
        ]
        live = pd.DataFrame(
            {
                "target_open_time": [target for target, _ in scored],
                "absolute_error": [errors[0] for _, errors in scored],
                "last_close_absolute_error": [errors[1] for _, errors in scored],
            }
        )
        decision = demotion_decision(live, self.settings.live_error_candles)
        if decision.passed:
            self.demotions += 1
            self.published = None
            logger.debug("%s: as of %s %s", self.series, self._day(anchor), decision)

    def _lstm_closes(
        self, model: Any, preprocessing: dict[str, Any], anchors: np.ndarray
    ) -> dict[int, np.ndarray]:
        from btc_lstm.forecast import closes_from_log_returns
        from btc_lstm.model import predict_log_returns

        lookback = self.settings.lookback_candles
        # Feature row j belongs to candle j + 1, so the inputs of anchor a are the
        # rows of candles a - lookback + 1 .. a.
        inputs = np.stack([self.features[a - lookback : a] for a in anchors])
        log_returns = predict_log_returns(model, preprocessing, inputs)
        return {
            int(anchor): closes_from_log_returns(
                float(self.closes[anchor]), row, f"model used as of {self._day(anchor)}"
            )
            for anchor, row in zip(anchors, log_returns, strict=True)
        }

    def _record(
        self,
        model: str,
        anchor: int,
        predicted: np.ndarray,
        intervals: dict[str, list[float]] | None,
        scale: float,
    ) -> None:
        bounds = interval_columns(predicted, intervals) if intervals else {}
        for index, close in enumerate(predicted):
            step = index + 1
            self.records.append(
                {
                    "model": model,
                    "as_of_open_time": self.candles["open_time"].iloc[anchor],
                    "horizon_step": step,
                    "target_open_time": self.candles["open_time"].iloc[anchor + step],
                    "as_of_close": float(self.closes[anchor]),
                    "predicted_close": float(close),
                    "actual_close": float(self.closes[anchor + step]),
                    "naive_scale": scale,
                    **{name: float(values[index]) for name, values in bounds.items()},
                }
            )

    def _day(self, anchor: int) -> str:
        return f"{self.candles['open_time'].iloc[anchor]:%Y-%m-%d}"
