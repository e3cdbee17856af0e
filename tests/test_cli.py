import json
import socket
import sqlite3
import subprocess
import sys

import pytest

from btc_lstm.candles import Series
from btc_lstm.cli import main
from btc_lstm.store import load_candles

HEAVY_MODULES = ("tensorflow", "keras", "prefect")
BTC = Series("binance", "BTC/USDT", "1d")


def loaded_modules_after(arguments, cwd, env_url):
    """Run the CLI in a fresh interpreter; return which heavy modules it imported."""
    script = (
        "import sys\n"
        "from btc_lstm.cli import main\n"
        "try:\n"
        f"    main({arguments!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={
            "BTC_LSTM_DATABASE_URL": env_url,
            "PATH": "",
            "HOME": str(cwd),
            "PREFECT_HOME": str(cwd / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1].replace("'", '"'))


class TestFastPath:
    @pytest.mark.parametrize(
        "arguments",
        [
            ["--help"],
            ["db", "upgrade"],
            ["db", "current"],
            ["predictions"],
        ],
    )
    def test_command_imports_neither_tensorflow_nor_prefect(
        self, arguments, database_url, tmp_path
    ):
        loaded = loaded_modules_after(arguments, tmp_path, database_url)

        assert loaded == []

    @pytest.mark.slow
    def test_ingest_flow_skips_tensorflow(self, database_url, tmp_path, btc_csv):
        loaded = loaded_modules_after(
            ["ingest", "--csv", str(btc_csv)], tmp_path, database_url
        )

        assert "prefect" in loaded
        assert "tensorflow" not in loaded
        assert "keras" not in loaded

    def test_import_csv_skips_tensorflow(self, database_url, tmp_path, btc_csv):
        loaded = loaded_modules_after(
            ["import-csv", str(btc_csv)], tmp_path, database_url
        )

        assert loaded == []


class TestErrors:
    def run(self, capsys, *arguments):
        code = main(list(arguments))
        return code, capsys.readouterr().err.strip()

    def test_unknown_exchange_id(self, capsys, database_url):
        code, error = self.run(
            capsys, "run", "--database-url", database_url, "--exchange", "binanse"
        )

        assert code == 1
        assert error == (
            "btc-lstm: error: unknown exchange id 'binanse'; use a ccxt id such as "
            "binance, kraken or coinbase (the full list is ccxt.exchanges)"
        )

    def test_csv_that_is_not_ohlcv(self, capsys, database_url, tmp_path):
        path = tmp_path / "people.csv"
        path.write_text("name,age\nada,36\nalan,41\n")

        code, error = self.run(
            capsys, "run", "--database-url", database_url, "--csv", str(path)
        )

        assert code == 1
        assert error.startswith("btc-lstm: error: ")
        assert "not a candle file, found columns name, age" in error
        assert "\n" not in error

    def test_database_that_cannot_be_opened(self, capsys, tmp_path):
        url = f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}"

        code, error = self.run(capsys, "db", "upgrade", "--database-url", url)

        assert code == 1
        assert "btc-lstm: error: cannot open database" in error
        assert "\n" not in error

    def test_foreign_table_fails_in_one_line(self, capsys, tmp_path):
        path = tmp_path / "other_app.db"
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE ohlcv (anything TEXT)")

        code, error = self.run(
            capsys, "db", "upgrade", "--database-url", f"sqlite:///{path}"
        )

        assert code == 1
        assert error.startswith(
            "btc-lstm: error: database operation failed: table ohlcv already exists"
        )
        assert "\n" not in error

    def test_invalid_symbol_for_import(self, capsys, database_url, btc_csv):
        code, error = self.run(
            capsys,
            "import-csv",
            "--database-url",
            database_url,
            "--symbol",
            "BTCUSDT",
            str(btc_csv),
        )

        assert code == 1
        assert "invalid symbol 'BTCUSDT'; write it as BASE/QUOTE" in error

    def test_missing_sqlite_file_is_not_created(self, capsys, tmp_path):
        path = tmp_path / "typo.db"

        code, error = self.run(
            capsys, "predictions", "--database-url", f"sqlite:///{path}"
        )

        assert code == 1
        assert f"database file {path} does not exist" in error
        assert not path.exists()

    def test_unknown_revision(self, capsys, database_url):
        code, error = self.run(
            capsys, "db", "downgrade", "nonsense", "--database-url", database_url
        )

        assert code == 1
        assert "migration to revision 'nonsense' failed" in error
        assert "known revisions are base, 0004, 0003, 0002, 0001 and head" in error

    def test_predictions_filter_lists_stored_series(self, capsys, engine, database_url):
        from btc_lstm.store import upsert_candles
        from tests.conftest import make_candles
        from tests.test_views import add_forecast, add_model_run

        candles = make_candles(20)
        upsert_candles(engine, BTC, candles)
        as_of = candles["open_time"].iloc[-1]
        add_forecast(engine, add_model_run(engine, as_of.to_pydatetime()), as_of, [1.0])

        code, error = self.run(
            capsys,
            "predictions",
            "--database-url",
            database_url,
            "--symbol",
            "ETH/USDT",
        )

        assert code == 1
        assert error == (
            "btc-lstm: error: no forecasts match the filters; forecasts exist for "
            "binance BTC/USDT 1d"
        )

    def test_unreachable_prefect_api(self, capsys, database_url):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        api_url = f"http://127.0.0.1:{closed_port}/api"

        with temporary_settings({PREFECT_API_URL: api_url}):
            code, error = self.run(capsys, "forecast", "--database-url", database_url)

        assert code == 1
        assert error.startswith(
            f"btc-lstm: error: cannot reach the Prefect API at {api_url}"
        )
        assert "\n" not in error

    def test_invalid_setting_names_variable(self, capsys, monkeypatch, database_url):
        monkeypatch.setenv("BTC_LSTM_EPOCHS", "lots")

        code, error = self.run(capsys, "train", "--database-url", database_url)

        assert code == 1
        assert "BTC_LSTM_EPOCHS" in error

    def test_predictions_before_upgrade(self, capsys, database_url, open_engine):
        open_engine(database_url)  # creates an empty SQLite file

        code, error = self.run(capsys, "predictions", "--database-url", database_url)

        assert code == 1
        assert "run `btc-lstm db upgrade` first" in error

    def test_import_keeps_stored_rows_when_file_is_bad(
        self, capsys, database_url, open_engine, tmp_path, btc_csv
    ):
        assert main(["import-csv", "--database-url", database_url, str(btc_csv)]) == 0
        broken = tmp_path / "Binance_BTCUSDT_d.csv"
        lines = btc_csv.read_text().splitlines()
        lines[5] = "yesterday" + lines[5][lines[5].index(",") :]
        broken.write_text("\n".join(lines))
        capsys.readouterr()

        code, error = self.run(
            capsys, "import-csv", "--database-url", database_url, str(broken)
        )

        stored = load_candles(open_engine(database_url), BTC)
        assert code == 1
        assert "rows with an invalid time, first data row 5" in error
        assert len(stored) == 2769


class TestImportCommand:
    def test_prints_counts_with_rejected_rows(
        self, capsys, database_url, tmp_path, btc_csv
    ):
        broken = tmp_path / "Binance_BTCUSDT_d.csv"
        lines = btc_csv.read_text().splitlines()
        lines[5] = lines[5].replace("BTCUSDT,", "BTCUSDT,-", 1)
        broken.write_text("\n".join(lines))

        code = main(["import-csv", "--database-url", database_url, str(broken)])

        assert code == 0
        assert capsys.readouterr().out == (
            f"{broken}: binance BTC/USDT 1d: 2769 rows read, 2768 stored, "
            "0 updated, 0 unchanged, 1 rejected\n"
        )

    def test_second_import_counts_unchanged_rows(self, capsys, database_url, btc_csv):
        main(["import-csv", "--database-url", database_url, str(btc_csv)])
        capsys.readouterr()

        main(["import-csv", "--database-url", database_url, str(btc_csv)])

        assert "2769 rows read, 0 stored, 0 updated, 2769 unchanged, 0 rejected" in (
            capsys.readouterr().out
        )


@pytest.mark.slow
class TestRunCommand:
    def test_too_little_history_says_how_much(self, capsys, flow_environment, btc_csv):
        code = main(["run", "--csv", str(btc_csv), "--window-candles", "5000"])

        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1
        assert error == (
            "btc-lstm: error: need 5000 closed 1d candles of binance BTC/USDT to "
            "train, found 2769; ingest more history (an earlier "
            "BTC_LSTM_HISTORY_START, or a file that goes further back) or lower "
            "BTC_LSTM_WINDOW_CANDLES"
        )

    def test_run_then_print_predictions(self, capsys, flow_environment, btc_csv):
        assert main(["run", "--csv", str(btc_csv), "--epochs", "2"]) == 0
        capsys.readouterr()

        assert main(["predictions", "--format", "json"]) == 0

        rows = json.loads(capsys.readouterr().out)
        assert [row["horizon_step"] for row in rows] == list(range(1, 8))
        assert rows[0]["symbol"] == "BTC/USDT"
        assert rows[0]["target_open_time"].startswith("2025-03-17")
        assert rows[-1]["target_open_time"].startswith("2025-03-23")
