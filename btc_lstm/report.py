"""Report stage: pictures and a metrics table of the forecasts and the backtest.

Reads the store only, so it needs neither TensorFlow nor Prefect.
"""

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from btc_lstm.candles import Series
from btc_lstm.errors import BtcLstmError
from btc_lstm.store import load_candles, load_latest_backtest, load_latest_forecast

HISTORY_CANDLES = 90
MODEL_COLORS = {
    "published": "black",
    "lstm": "tab:blue",
    "last_close": "tab:gray",
    "drift": "tab:green",
    "seasonal_naive": "tab:orange",
}


@dataclass(frozen=True)
class Report:
    """The files written for one series and the backtest metrics in Markdown."""

    series: Series
    forecast_png: Path | None
    backtest_png: Path | None
    metrics_markdown: str | None


def write_report(engine: Engine, series: Series, folder: Path) -> Report:
    """Write `<series>-forecast.png` and `<series>-backtest.png` into `folder`.

    The forecast picture shows the newest candles with the forecast of record and
    its 80% and 95% intervals; the backtest picture shows the newest backtest's
    step-1 forecasts against the realised closes, and its MAE by horizon step.

    Raises:
        BtcLstmError: the series has neither a forecast nor a backtest.
    """
    forecast = load_latest_forecast(engine, series)
    backtest = load_latest_backtest(engine, series)
    if forecast.empty and backtest is None:
        raise BtcLstmError(
            f"{series}: no forecast and no backtest stored; run `btc-lstm run` or "
            "`btc-lstm backtest` first"
        )
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{series.exchange}-{series.symbol.replace('/', '-')}-{series.timeframe}"
    forecast_png = None
    if not forecast.empty:
        forecast_png = folder / f"{stem}-forecast.png"
        candles = load_candles(engine, series, limit=HISTORY_CANDLES)
        _draw_forecast(series, candles, forecast, forecast_png)
    backtest_png = None
    markdown = None
    if backtest is not None:
        run, metrics, forecasts = backtest
        backtest_png = folder / f"{stem}-backtest.png"
        _draw_backtest(series, run, metrics, forecasts, backtest_png)
        markdown = metrics_markdown(series, run, metrics)
    return Report(series, forecast_png, backtest_png, markdown)


def _pyplot() -> Any:
    import matplotlib

    # No display: draw into files only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_forecast(
    series: Series, candles: pd.DataFrame, forecast: pd.DataFrame, path: Path
) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 5), dpi=100)
    axes.plot(candles["open_time"], candles["close"], color="black", label="close")
    as_of = forecast["as_of_open_time"].iloc[0]
    last_close = candles.loc[candles["open_time"] == as_of, "close"]
    times = pd.concat([pd.Series([as_of]), forecast["target_open_time"]])
    anchor = [last_close.iloc[0]] if not last_close.empty else [np.nan]
    closes = np.concatenate([anchor, forecast["predicted_close"]])
    model = forecast["model"].iloc[0]
    color = MODEL_COLORS.get(model, "tab:blue")
    for level, alpha in ((95, 0.15), (80, 0.3)):
        if forecast[f"lower_{level}"].notna().all():
            axes.fill_between(
                forecast["target_open_time"],
                forecast[f"lower_{level}"],
                forecast[f"upper_{level}"],
                color=color,
                alpha=alpha,
                label=f"{level}% interval",
            )
    axes.plot(times, closes, color=color, marker="o", label=f"forecast ({model})")
    axes.set_title(f"{series}: forecast of record after {as_of:%Y-%m-%d %H:%M} UTC")
    axes.set_ylabel("close")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _draw_backtest(
    series: Series,
    run: dict[str, object],
    metrics: pd.DataFrame,
    forecasts: pd.DataFrame,
    path: Path,
) -> None:
    plt = _pyplot()
    figure, (history, by_step) = plt.subplots(
        1, 2, figsize=(14, 5), dpi=100, gridspec_kw={"width_ratios": [2, 1]}
    )
    step_1 = forecasts[forecasts["horizon_step"] == 1]
    realised = step_1[step_1["model"] == "last_close"]
    history.plot(
        realised["target_open_time"],
        realised["actual_close"],
        color="black",
        label="realised close",
    )
    for model in ("lstm", "published"):
        rows = step_1[step_1["model"] == model]
        history.plot(
            rows["target_open_time"],
            rows["predicted_close"],
            color=MODEL_COLORS[model],
            linewidth=0.9,
            alpha=0.8,
            label=f"{model}, one step ahead",
        )
    published = step_1[step_1["model"] == "published"]
    if published["lower_95"].notna().all():
        history.fill_between(
            published["target_open_time"],
            published["lower_95"],
            published["upper_95"],
            color="gray",
            alpha=0.2,
            label="published 95% interval",
        )
    history.set_title(f"{series}: step-1 forecasts against realised closes")
    history.grid(alpha=0.3)
    history.legend(loc="upper left")

    for model_name, rows in metrics.groupby("model"):
        model = str(model_name)
        by_step.plot(
            rows["horizon_step"],
            rows["mae"],
            marker="o",
            color=MODEL_COLORS.get(model),
            label=model,
        )
    by_step.set_title("MAE by horizon step")
    by_step.set_xlabel("horizon step (candles ahead)")
    by_step.set_ylabel("mean absolute error")
    by_step.grid(alpha=0.3)
    by_step.legend()
    figure.suptitle(
        f"Backtest {run['id']}: as of {run['first_as_of_open_time']:%Y-%m-%d} to "
        f"{run['last_as_of_open_time']:%Y-%m-%d}, retrained every "
        f"{run['retrain_every_candles']} candles"
    )
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def metrics_markdown(
    series: Series, run: dict[str, object], metrics: pd.DataFrame
) -> str:
    """Return a Markdown table of a backtest's metrics by model and horizon step."""
    header = (
        "| model | step | forecasts | MAE | ratio to last close | RMSE | MAPE % | "
        "MASE | direction | 80% coverage | 95% coverage |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [
        f"### Backtest {run['id']} of {series}",
        "",
        f"As of {run['first_as_of_open_time']:%Y-%m-%d} to "
        f"{run['last_as_of_open_time']:%Y-%m-%d}, retrained every "
        f"{run['retrain_every_candles']} candles.",
        "",
        header,
    ]
    for row in metrics.to_dict("records"):
        lines.append(
            f"| {row['model']} | {row['horizon_step']} | {row['forecasts']} | "
            f"{row['mae']:.2f} | {_number(row['mae_ratio_to_last_close'], 3)} | "
            f"{row['rmse']:.2f} | {row['mape']:.2f} | {row['mase']:.3f} | "
            f"{_share(row['directional_accuracy'])} | {_share(row['coverage_80'])} | "
            f"{_share(row['coverage_95'])} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def image_markdown(path: Path, title: str) -> str:
    """Return Markdown that shows a PNG inline, as a data URI."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{title}](data:image/png;base64,{encoded})"
