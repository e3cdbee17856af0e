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
ROLLING_FORECASTS = 30
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
    its 80% and 95% intervals. The backtest picture shows the newest backtest's
    recent step-1 forecasts against the realised closes, the rolling step-1 error
    against last close's, and the MAE by horizon step.

    Raises:
        BtcLstmError: the series has neither a forecast nor a backtest.
    """
    forecast = load_latest_forecast(engine, series)
    lstm = load_latest_forecast(engine, series, model="lstm")
    backtest = load_latest_backtest(engine, series)
    if forecast.empty and backtest is None:
        raise BtcLstmError(
            f"{series}: no forecast and no backtest stored; run `btc-lstm run` or "
            "`btc-lstm backtest` first"
        )
    prepare_report_folder(folder)
    stem = f"{series.exchange}-{series.symbol.replace('/', '-')}-{series.timeframe}"
    forecast_png = None
    if not forecast.empty:
        forecast_png = folder / f"{stem}-forecast.png"
        candles = load_candles(engine, series, limit=HISTORY_CANDLES)
        _draw_forecast(series, candles, forecast, lstm, forecast_png)
    backtest_png = None
    markdown = None
    if backtest is not None:
        run, metrics, forecasts = backtest
        backtest_png = folder / f"{stem}-backtest.png"
        _draw_backtest(series, run, metrics, forecasts, backtest_png)
        markdown = metrics_markdown(series, run, metrics)
    return Report(series, forecast_png, backtest_png, markdown)


def prepare_report_folder(folder: Path) -> None:
    """Create `folder` if needed and check that files can be written into it.

    Raises:
        BtcLstmError: the folder cannot be created or written to.
    """
    probe = folder / ".btc-lstm-write-check"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BtcLstmError(
            f"cannot write the report to {folder}: {exc.strerror or exc}; choose a "
            "folder you can write to"
        ) from exc


def _save(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path)
    except OSError as exc:
        raise BtcLstmError(
            f"cannot write {path}: {exc.strerror or exc}; choose a folder you can "
            "write to"
        ) from exc


def _pyplot() -> Any:
    import matplotlib

    # No display: draw into files only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_forecast(
    series: Series,
    candles: pd.DataFrame,
    forecast: pd.DataFrame,
    lstm: pd.DataFrame,
    path: Path,
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
    same_as_of = not lstm.empty and lstm["as_of_open_time"].iloc[0] == as_of
    if model != "lstm" and same_as_of:
        lstm_closes = np.concatenate([anchor, lstm["predicted_close"]])
        axes.plot(
            times,
            lstm_closes,
            color=MODEL_COLORS["lstm"],
            linestyle="--",
            label="lstm, not published",
        )
    axes.set_title(f"{series}: forecast of record after {as_of:%Y-%m-%d %H:%M} UTC")
    axes.set_ylabel("close")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    try:
        _save(figure, path)
    finally:
        plt.close(figure)


def _draw_backtest(
    series: Series,
    run: dict[str, Any],
    metrics: pd.DataFrame,
    forecasts: pd.DataFrame,
    path: Path,
) -> None:
    plt = _pyplot()
    figure, (recent, rolling, by_step) = plt.subplots(
        1, 3, figsize=(18, 5), dpi=100, gridspec_kw={"width_ratios": [3, 3, 2]}
    )
    step_1 = forecasts[forecasts["horizon_step"] == 1]
    _draw_recent_forecasts(recent, series, step_1)
    _draw_rolling_error(rolling, step_1)

    for model_name, rows in metrics.groupby("model"):
        model = str(model_name)
        by_step.plot(
            rows["horizon_step"],
            rows["mae"],
            marker="o",
            color=MODEL_COLORS.get(model),
            linestyle="--" if model == "last_close" else "-",
            zorder=3 if model == "last_close" else 2,
            label=model,
        )
    by_step.set_title("MAE by horizon step, whole backtest")
    by_step.set_xticks(sorted(metrics["horizon_step"].unique()))
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
    try:
        _save(figure, path)
    finally:
        plt.close(figure)


def _draw_recent_forecasts(axes: Any, series: Series, step_1: pd.DataFrame) -> None:
    """Draw the newest one-step forecasts against the closes that followed."""
    newest_targets = (
        step_1["target_open_time"].drop_duplicates().nlargest(HISTORY_CANDLES)
    )
    recent = step_1[step_1["target_open_time"].isin(newest_targets)]
    realised = recent[recent["model"] == "last_close"]
    axes.plot(
        realised["target_open_time"],
        realised["actual_close"],
        color="black",
        label="realised close",
    )
    for model in ("lstm", "published"):
        rows = recent[recent["model"] == model]
        axes.plot(
            rows["target_open_time"],
            rows["predicted_close"],
            color=MODEL_COLORS[model],
            linestyle="-" if model == "lstm" else ":",
            label=f"{model}, one step ahead",
        )
    published = recent[recent["model"] == "published"]
    for level, alpha in ((95, 0.12), (80, 0.25)):
        if published[f"lower_{level}"].notna().all():
            axes.fill_between(
                published["target_open_time"],
                published[f"lower_{level}"],
                published[f"upper_{level}"],
                color="gray",
                alpha=alpha,
                label=f"published {level}% interval",
            )
    axes.set_title(f"{series}: newest {len(realised)} one-step forecasts")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")


def _draw_rolling_error(axes: Any, step_1: pd.DataFrame) -> None:
    """Draw each model's rolling step-1 MAE over last close's.

    The window is 30 forecasts, or a third of a shorter backtest's forecasts so
    that the line still has points.
    """
    errors = step_1.assign(
        absolute_error=(step_1["predicted_close"] - step_1["actual_close"]).abs()
    ).pivot(index="target_open_time", columns="model", values="absolute_error")
    window = min(ROLLING_FORECASTS, max(1, len(errors) // 3))
    rolling = errors.rolling(window).mean()
    for model in ("lstm", "drift", "published"):
        if model in rolling:
            axes.plot(
                rolling.index,
                rolling[model] / rolling["last_close"],
                color=MODEL_COLORS[model],
                label=model,
            )
    axes.axhline(1.0, color=MODEL_COLORS["last_close"], linestyle="--")
    axes.set_title(
        f"Step-1 MAE over the last {window} forecasts, relative to last close"
    )
    axes.set_ylabel("MAE ratio (below 1 beats last close)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")


def metrics_markdown(series: Series, run: dict[str, Any], metrics: pd.DataFrame) -> str:
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
