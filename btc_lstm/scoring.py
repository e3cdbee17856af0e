"""Forecast errors: conformal intervals and the metrics a backtest reports.

Errors are measured in log space, log(actual / predicted), so one interval width
fits a price of 100 and of 100,000 alike.
"""

import math

import numpy as np
import pandas as pd

INTERVAL_LEVELS = (80, 95)


def conformal_halfwidths(log_errors: np.ndarray, level: int) -> list[float]:
    """Return, per horizon step, the half-width of a split-conformal interval.

    Args:
        log_errors: out-of-sample errors log(actual / predicted), shape
            `(forecasts, horizon)`.
        level: coverage in percent, such as 80 or 95.

    Returns:
        For each step, the ceil((n + 1) * level / 100)-th smallest absolute error
        of the n forecasts, so that a new forecast falls within that distance with
        probability at least `level` percent when errors are exchangeable. With
        too few forecasts for that rank, the largest error is used.
    """
    absolute = np.sort(np.abs(log_errors), axis=0)
    count = absolute.shape[0]
    rank = min(count, math.ceil((count + 1) * level / 100))
    return [float(value) for value in absolute[rank - 1]]


def interval_bounds(
    predicted: np.ndarray, halfwidths: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (lower, upper) price bounds around predicted closes of shape (..., H)."""
    width = np.asarray(halfwidths)
    return predicted * np.exp(-width), predicted * np.exp(width)


def interval_columns(
    predicted: np.ndarray, intervals: dict[str, list[float]]
) -> dict[str, np.ndarray]:
    """Return the lower_/upper_ columns of each level stored in `intervals`."""
    columns = {}
    for level in INTERVAL_LEVELS:
        lower, upper = interval_bounds(predicted, intervals[str(level)])
        columns[f"lower_{level}"] = lower
        columns[f"upper_{level}"] = upper
    return columns


def naive_scale(closes: np.ndarray) -> float:
    """Return the mean absolute one-step change of `closes`: the MASE denominator."""
    return float(np.abs(np.diff(closes)).mean())


METRIC_COLUMNS = [
    "forecasts",
    "mae",
    "rmse",
    "mape",
    "mase",
    "directional_accuracy",
    "coverage_80",
    "coverage_95",
    "mae_ratio_to_last_close",
]


def score_forecasts(forecasts: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Return the metrics of each model at each horizon step.

    Args:
        forecasts: one row per forecast close, with columns model, horizon_step,
            as_of_close, predicted_close, actual_close, naive_scale and, where a
            model has intervals, lower_80, upper_80, lower_95, upper_95.
        reference: the model whose MAE at the same step divides each model's MAE
            in `mae_ratio_to_last_close`.

    Returns:
        One row per model and step with the columns in `METRIC_COLUMNS`.
        Directional accuracy is None for a model that never predicts a move.
    """
    rows = []
    for (model, step), group in forecasts.groupby(["model", "horizon_step"]):
        assert isinstance(step, int | np.integer)
        error = group["predicted_close"] - group["actual_close"]
        predicted_move = np.sign(group["predicted_close"] - group["as_of_close"])
        actual_move = np.sign(group["actual_close"] - group["as_of_close"])
        rows.append(
            {
                "model": model,
                "horizon_step": int(step),
                "forecasts": len(group),
                "mae": float(error.abs().mean()),
                "rmse": float(np.sqrt((error**2).mean())),
                "mape": float((100 * error.abs() / group["actual_close"]).mean()),
                "mase": float((error.abs() / group["naive_scale"]).mean()),
                "directional_accuracy": (
                    float((predicted_move == actual_move).mean())
                    if (predicted_move != 0).any()
                    else None
                ),
                "coverage_80": _coverage(group, 80),
                "coverage_95": _coverage(group, 95),
            }
        )
    metrics = pd.DataFrame(rows, columns=["model", "horizon_step", *METRIC_COLUMNS])
    reference_mae = metrics.loc[metrics["model"] == reference].set_index(
        "horizon_step"
    )["mae"]
    ratio = metrics["mae"] / metrics["horizon_step"].map(reference_mae)
    metrics["mae_ratio_to_last_close"] = ratio.where(np.isfinite(ratio), None)
    return metrics


def _coverage(group: pd.DataFrame, level: int) -> float | None:
    lower, upper = f"lower_{level}", f"upper_{level}"
    if lower not in group or group[lower].isna().all():
        return None
    inside = (group["actual_close"] >= group[lower]) & (
        group["actual_close"] <= group[upper]
    )
    return float(inside.mean())
