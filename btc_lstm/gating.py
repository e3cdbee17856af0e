"""Gating: which model's forecast is the forecast of record.

A retrained LSTM is promoted only when, on its own validation samples, its error
is no worse than the published model's and last close's, at step 1 and averaged
over all steps. A published LSTM whose live step-1 error over the newest scored
forecasts is worse than last close's is demoted. Without a published LSTM, the
last-close baseline is the forecast of record.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Fewer scored forecasts than this say too little about live error to demote.
MINIMUM_LIVE_FORECASTS = 10


@dataclass(frozen=True)
class Decision:
    """The outcome of a gate and the reason, as stored in `model_runs`."""

    passed: bool
    reason: str


def promotion_decision(
    candidate_mae_by_step: Sequence[float],
    reference_mae_by_step: Mapping[str, Sequence[float]],
) -> Decision:
    """Decide whether a candidate model becomes the published one.

    Args:
        candidate_mae_by_step: the candidate's validation MAE at each horizon step.
        reference_mae_by_step: the same validation samples' MAE of each model it
            must not be worse than, by name ("last close", "model run 12").

    Returns:
        Passed when the candidate's MAE at step 1 and its mean over the steps are
        at most each reference's. The reason quotes the numbers compared.
    """
    candidate = np.asarray(candidate_mae_by_step)
    worse = []
    compared = []
    for name, mae_by_step in reference_mae_by_step.items():
        reference = np.asarray(mae_by_step)
        compared.append(
            f"{name} {reference[0]:.6g} at step 1, {reference.mean():.6g} mean"
        )
        if candidate[0] > reference[0] or candidate.mean() > reference.mean():
            worse.append(name)
    summary = (
        f"validation MAE {candidate[0]:.6g} at step 1, {candidate.mean():.6g} mean; "
        + "; ".join(compared)
    )
    if worse:
        return Decision(
            False, f"not promoted: worse than {', '.join(worse)} ({summary})"
        )
    return Decision(True, f"promoted: no worse than any reference ({summary})")


def demotion_decision(live: pd.DataFrame, live_error_candles: int) -> Decision:
    """Decide whether the published LSTM is demoted on its live error.

    Args:
        live: one row per scored step-1 LSTM forecast, with columns
            target_open_time, absolute_error and last_close_absolute_error.
        live_error_candles: how many of the newest scored forecasts to compare.

    Returns:
        Passed (demote) when at least `MINIMUM_LIVE_FORECASTS` forecasts are scored
        and the LSTM's mean absolute error over the newest ones is larger than
        last close's over the same targets.
    """
    newest = live.sort_values("target_open_time").tail(live_error_candles)
    if len(newest) < MINIMUM_LIVE_FORECASTS:
        return Decision(
            False,
            f"only {len(newest)} scored forecasts, fewer than "
            f"{MINIMUM_LIVE_FORECASTS}; not judged on live error yet",
        )
    model_mae = float(newest["absolute_error"].mean())
    last_close_mae = float(newest["last_close_absolute_error"].mean())
    summary = (
        f"live MAE at step 1 over the newest {len(newest)} scored forecasts is "
        f"{model_mae:.6g} vs {last_close_mae:.6g} for last close"
    )
    if model_mae > last_close_mae:
        return Decision(True, f"demoted: {summary}")
    return Decision(False, summary)
