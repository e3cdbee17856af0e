"""Walk-forward backtests: what they store, and that no forecast reads its future."""

import pandas as pd
import pytest
import sqlalchemy as sa

from btc_lstm.backtest import backtest_series
from btc_lstm.candles import Series
from btc_lstm.errors import ConfigError, InsufficientHistoryError
from btc_lstm.store import load_latest_backtest, upsert_candles
from btc_lstm.store.schema import backtest_runs
from tests.factories import make_candles, small_settings
from tests.test_cli import loaded_modules_after

SERIES = Series("binance", "BTC/USDT", "1d")
MODELS = {"lstm", "last_close", "drift", "seasonal_naive", "published"}

pytestmark = pytest.mark.slow


def settings():
    return small_settings(retrain_every_candles=5)


class TestBacktestSeries:
    def test_stores_metrics_of_every_model_and_step(self, engine):
        candles = make_candles(150)
        upsert_candles(engine, SERIES, candles)

        result = backtest_series(engine, settings(), SERIES, as_of_candles=10)
        run, metrics, forecasts = load_latest_backtest(engine, SERIES)

        assert result.retrain_count == 2
        assert run["id"] == result.backtest_run_id
        # The newest as-of candle is the last whose 3 targets are stored.
        assert run["last_as_of_open_time"] == candles["open_time"].iloc[-4]
        assert run["first_as_of_open_time"] == candles["open_time"].iloc[-13]
        assert set(metrics["model"]) == MODELS
        assert len(metrics) == len(MODELS) * 3
        assert (metrics["forecasts"] == 10).all()
        assert len(forecasts) == len(MODELS) * 10 * 3
        last_close = metrics[metrics["model"] == "last_close"]
        assert (last_close["mae_ratio_to_last_close"] == 1.0).all()
        lstm = metrics[metrics["model"] == "lstm"]
        assert lstm["coverage_80"].between(0, 1).all()
        assert lstm["directional_accuracy"].between(0, 1).all()
        assert (forecasts["actual_close"] > 0).all()

    def test_forecasts_read_nothing_after_their_as_of_candle(
        self, engine, open_engine, tmp_path
    ):
        candles = make_candles(150)
        # The same history, but every close after candle 141 is half as high.
        changed = candles.copy()
        later = changed.index >= 142
        changed.loc[later, ["open", "high", "low", "close"]] *= 0.5
        other = open_engine(f"sqlite:///{tmp_path / 'changed.db'}")
        from btc_lstm.migrate import upgrade_database

        upgrade_database(other)
        upsert_candles(engine, SERIES, candles)
        upsert_candles(other, SERIES, changed)

        stored = []
        for database in (engine, other):
            backtest_series(database, settings(), SERIES, as_of_candles=10)
            _, _, forecasts = load_latest_backtest(database, SERIES)
            before = forecasts["as_of_open_time"] < candles["open_time"].iloc[142]
            stored.append(forecasts.loc[before].reset_index(drop=True))

        columns = ["model", "as_of_open_time", "horizon_step", "predicted_close"]
        columns += ["lower_80", "upper_80", "lower_95", "upper_95"]
        assert len(stored[0]) == len(MODELS) * 5 * 3
        pd.testing.assert_frame_equal(stored[0][columns], stored[1][columns])
        assert not stored[0]["actual_close"].equals(stored[1]["actual_close"])

    def test_too_little_history_says_how_much_is_needed(self, engine):
        upsert_candles(engine, SERIES, make_candles(130))

        with pytest.raises(
            InsufficientHistoryError, match="needs 132 stored candles .* found 130"
        ):
            backtest_series(engine, settings(), SERIES, as_of_candles=10)

        with engine.connect() as connection:
            stored = connection.execute(
                sa.select(sa.func.count()).select_from(backtest_runs)
            ).scalar_one()
        assert stored == 0

    def test_gap_in_the_range_is_named(self, engine):
        candles = make_candles(150)
        upsert_candles(engine, SERIES, candles.drop(index=[100]))
        missing = candles["open_time"].iloc[100]

        with pytest.raises(
            InsufficientHistoryError, match=f"1 candles missing.*{missing:%Y-%m-%d}"
        ):
            backtest_series(engine, settings(), SERIES, as_of_candles=10)

    @pytest.mark.parametrize("as_of_candles", [0, -5])
    def test_no_as_of_candles(self, engine, as_of_candles):
        upsert_candles(engine, SERIES, make_candles(150))

        with pytest.raises(ConfigError, match="at least 1 as-of candle"):
            backtest_series(engine, settings(), SERIES, as_of_candles=as_of_candles)


class TestBacktestFlowAndReport:
    def test_flow_stores_backtest_and_attaches_pictures(
        self, flow_environment, open_engine, tmp_path
    ):
        from prefect import get_client

        from flows.pipeline import backtest

        engine = open_engine(flow_environment)
        from btc_lstm.migrate import upgrade_database

        upgrade_database(engine)
        upsert_candles(engine, SERIES, make_candles(150))
        options = {
            "window_candles": 120,
            "lookback_candles": 10,
            "horizon_candles": 3,
            "epochs": 2,
            "retrain_every_candles": 5,
        }

        state = backtest(
            as_of_candles=10,
            report_folder=str(tmp_path / "pictures"),
            return_state=True,
            **options,
        )

        results = state.result()
        assert [result["retrain_count"] for result in results] == [2]
        assert (tmp_path / "pictures" / "binance-BTC-USDT-1d-backtest.png").stat()
        flow_run_id = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts()
        report = [
            artifact
            for artifact in artifacts
            if artifact.flow_run_id == flow_run_id
            and artifact.key == "report-binance-btc-usdt-1d"
        ]
        assert len(report) == 1
        assert "data:image/png;base64," in report[0].data
        assert "| lstm | 1 | 10 |" in report[0].data

    def test_report_command_writes_both_pictures(
        self, engine, database_url, tmp_path, monkeypatch, capsys
    ):
        from btc_lstm.cli import main
        from btc_lstm.forecast import forecast_series
        from btc_lstm.train import train_series

        upsert_candles(engine, SERIES, make_candles(150))
        train_series(engine, settings(), SERIES)
        forecast_series(engine, SERIES)
        backtest_series(engine, settings(), SERIES, as_of_candles=5)
        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)

        code = main(["report", "--out", str(tmp_path / "out")])

        printed = capsys.readouterr().out.split()
        assert code == 0
        assert printed == [
            str(tmp_path / "out" / "binance-BTC-USDT-1d-forecast.png"),
            str(tmp_path / "out" / "binance-BTC-USDT-1d-backtest.png"),
        ]
        for path in printed:
            with open(path, "rb") as picture:
                assert picture.read(8) == b"\x89PNG\r\n\x1a\n"
        loaded = loaded_modules_after(
            ["report", "--out", str(tmp_path / "again")], tmp_path, database_url
        )
        assert loaded == []
        assert (tmp_path / "again" / "binance-BTC-USDT-1d-backtest.png").exists()

    def test_report_of_backtest_without_forecast(
        self, engine, database_url, tmp_path, monkeypatch, capsys
    ):
        from btc_lstm.cli import main

        upsert_candles(engine, SERIES, make_candles(150))
        backtest_series(engine, settings(), SERIES, as_of_candles=5)
        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)

        code = main(["report", "--out", str(tmp_path)])

        assert code == 0
        printed = capsys.readouterr().out.split()
        assert printed == [str(tmp_path / "binance-BTC-USDT-1d-backtest.png")]

    def test_report_without_forecasts_says_what_to_run(
        self, engine, database_url, tmp_path, monkeypatch, capsys
    ):
        from btc_lstm.cli import main

        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)

        code = main(["report", "--out", str(tmp_path)])

        assert code != 0
        assert "run `btc-lstm run` first" in capsys.readouterr().err


class TestBacktestCommandErrors:
    def test_zero_candles_fail_before_the_flow(self, database_url, monkeypatch, capsys):
        from btc_lstm.cli import main

        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)

        code = main(["backtest", "--candles", "0"])

        assert code == 1
        error = capsys.readouterr().err
        assert "--candles must be at least 1, got 0" in error

    def test_report_folder_that_is_a_file(
        self, database_url, tmp_path, monkeypatch, capsys
    ):
        from btc_lstm.cli import main

        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)
        existing_file = tmp_path / "existing_file"
        existing_file.write_text("not a folder")

        code = main(["backtest", "--report", str(existing_file)])

        assert code == 1
        error = capsys.readouterr().err
        assert f"cannot write the report to {existing_file}" in error
        assert "Traceback" not in error

    def test_report_out_that_is_a_file(
        self, engine, database_url, tmp_path, monkeypatch, capsys
    ):
        from btc_lstm.cli import main

        upsert_candles(engine, SERIES, make_candles(150))
        backtest_series(engine, settings(), SERIES, as_of_candles=3)
        monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)
        existing_file = tmp_path / "existing_file"
        existing_file.write_text("not a folder")

        code = main(["report", "--out", str(existing_file / "pictures")])

        assert code == 1
        error = capsys.readouterr().err
        assert "cannot write the report to" in error
        assert existing_file.read_text() == "not a folder"
