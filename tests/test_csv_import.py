"""Reading candle files: layout detection, times, timeframes and file errors.

Row values are not checked when a file is read; tests/test_import.py covers how
bad rows are rejected when the candles are stored.
"""

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btc_lstm.candles import open_times_ms
from btc_lstm.csv_import import read_candle_csv
from btc_lstm.errors import CsvFormatError
from tests.conftest import require_shared_file

FIXTURES = Path(__file__).parent / "data"

CRYPTODATADOWNLOAD_ROWS = """\
Unix,Date,Symbol,Open,High,Low,Close,Volume ETH,Volume USDT,tradecount
1740441600000000,2025-02-25,ETHUSDT,2500.0,2600.0,2400.0,2550.0,10.0,25500.0,7
1740355200000,2025-02-24,ETHUSDT,2450.0,2520.0,2440.0,2500.0,12.0,30000.0,8
1740268800000,2025-02-23,ETHUSDT,2400.0,2460.0,2390.0,2450.0,11.0,26950.0,9
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestCryptoDataDownload:
    def test_shared_btc_file_reads_every_day(self, btc_csv):
        candle_file = read_candle_csv(btc_csv)
        candles = candle_file.candles

        assert str(candle_file.series) == "binance BTC/USDT 1d"
        assert len(candles) == 2769
        assert candles["open_time"].iloc[0] == pd.Timestamp("2017-08-17", tz="UTC")
        assert candles["open_time"].iloc[-1] == pd.Timestamp("2025-03-16", tz="UTC")
        assert candles["open_time"].is_monotonic_increasing
        assert (candles["open_time"].diff().dropna() == pd.Timedelta(days=1)).all()

    def test_shared_btc_file_microsecond_rows(self, btc_csv):
        candles = read_candle_csv(btc_csv).candles.set_index("open_time")

        row = candles.loc[pd.Timestamp("2025-02-25", tz="UTC")]
        assert row["close"] == 88680.4
        assert row["volume"] == 78333.11111

    def test_microsecond_and_millisecond_times_mix(self, tmp_path):
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", CRYPTODATADOWNLOAD_ROWS)

        candles = read_candle_csv(path).candles

        assert list(candles["open_time"].dt.day) == [23, 24, 25]
        assert list(candles["close"]) == [2450.0, 2500.0, 2550.0]

    def test_address_line_above_header_is_skipped(self, tmp_path):
        text = "https://www.CryptoDataDownload.com\n" + CRYPTODATADOWNLOAD_ROWS
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        candle_file = read_candle_csv(path)

        assert candle_file.series.symbol == "ETH/USDT"
        assert len(candle_file.candles) == 3

    def test_symbol_and_exchange_overrides(self, tmp_path):
        path = write(tmp_path, "export.csv", CRYPTODATADOWNLOAD_ROWS)

        candle_file = read_candle_csv(path, exchange="kraken", symbol="ETH/USD")

        assert str(candle_file.series) == "kraken ETH/USD 1d"

    def test_unknown_exchange_in_name_asks_for_flag(self, tmp_path):
        path = write(tmp_path, "export.csv", CRYPTODATADOWNLOAD_ROWS)

        with pytest.raises(CsvFormatError, match="import-csv --exchange ID"):
            read_candle_csv(path)


class TestPlainFiles:
    def test_iso_dates_and_lowercase_columns(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        candle_file = read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

        assert candle_file.series.timeframe == "1d"
        assert list(candle_file.candles["close"]) == [10.5, 11.0]

    def test_four_hour_unix_seconds(self, tmp_path):
        text = (
            "timestamp,open,high,low,close,volume\n"
            "1704067200,10,11,9,10.5,100\n"
            "1704081600,10.5,12,10,11,120\n"
            "1704096000,11,12,10,11.5,130\n"
        )
        path = write(tmp_path, "candles.csv", text)

        candle_file = read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

        assert candle_file.series.timeframe == "4h"


class TestRejectedFiles:
    def test_missing_file(self, tmp_path):
        with pytest.raises(CsvFormatError, match="candle file not found"):
            read_candle_csv(tmp_path / "absent.csv")

    def test_not_ohlcv_columns(self, tmp_path):
        path = write(tmp_path, "Binance_people.csv", "name,age\nada,36\nalan,41\n")

        with pytest.raises(CsvFormatError, match="not a candle file") as error:
            read_candle_csv(path)

        assert "found columns name, age" in str(error.value)
        assert "a Yahoo Finance download" in str(error.value)
        assert "a Binance public data dump" in str(error.value)

    def test_empty_file(self, tmp_path):
        path = write(tmp_path, "Binance_empty.csv", "")

        with pytest.raises(CsvFormatError, match="not a readable CSV"):
            read_candle_csv(path)

    def test_duplicate_days(self, tmp_path):
        lines = CRYPTODATADOWNLOAD_ROWS.splitlines()
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", "\n".join([*lines, lines[2]]))

        with pytest.raises(CsvFormatError, match="share an open time"):
            read_candle_csv(path)

    def test_every_day_twice(self, tmp_path):
        lines = CRYPTODATADOWNLOAD_ROWS.splitlines()
        doubled = [lines[0], lines[1], *[row for row in lines[2:] for _ in (1, 2)]]
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", "\n".join(doubled))

        with pytest.raises(CsvFormatError, match="rows share an open time, first"):
            read_candle_csv(path)

    def test_several_symbols(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace(
            "2025-02-23,ETHUSDT", "2025-02-23,BTCUSDT"
        )
        path = write(tmp_path, "Binance_mixed_d.csv", text)

        with pytest.raises(CsvFormatError, match="split the file by symbol"):
            read_candle_csv(path)

    def test_irregular_spacing(self, tmp_path):
        text = (
            "timestamp,open,high,low,close,volume\n"
            "1704067200,10,11,9,10.5,100\n"
            "1704067207,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        with pytest.raises(CsvFormatError, match="unsupported timeframe"):
            read_candle_csv(path, exchange="binance", symbol="BTC/USDT")


class TestTimes:
    @pytest.mark.parametrize(
        ("unix", "problem"),
        [
            ("99999999999999999999", "is before 2009 or in the future"),
            ("9223372036854775807", "is before 2009 or in the future"),
            ("-86400000", "is before 2009 or in the future"),
            ("1740268800000.5", "is not a whole number"),
        ],
    )
    def test_invalid_unix_time_names_row(self, tmp_path, unix, problem):
        text = CRYPTODATADOWNLOAD_ROWS.replace("1740268800000,", f"{unix},")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        with pytest.raises(CsvFormatError, match=problem) as error:
            read_candle_csv(path)

        assert "first data row 3: Unix" in str(error.value)

    def test_nanosecond_times(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace("1740268800000,", "1740268800000000000,")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        candles = read_candle_csv(path).candles

        assert candles["open_time"].iloc[0] == pd.Timestamp("2025-02-23", tz="UTC")

    def test_future_and_unfinished_candles_are_kept_for_ingest(self, tmp_path):
        today = pd.Timestamp.now(tz="UTC").normalize()
        days = pd.date_range(end=today + pd.Timedelta(days=1), periods=4, freq="D")
        rows = [f"{day:%Y-%m-%d},10,11,9,10.5,100" for day in days]
        path = write(
            tmp_path,
            "candles.csv",
            "date,open,high,low,close,volume\n" + "\n".join(rows) + "\n",
        )

        candles = read_candle_csv(path, exchange="binance", symbol="BTC/USDT").candles

        assert list(candles["open_time"]) == list(days)

    def test_mixed_iso_formats(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02T00:00:00Z,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        candles = read_candle_csv(path, exchange="binance", symbol="BTC/USDT").candles

        assert len(candles) == 2

    def test_unparseable_date_names_row(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "yesterday,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        with pytest.raises(CsvFormatError, match="first data row 2"):
            read_candle_csv(path, exchange="binance", symbol="BTC/USDT")


class TestFileShape:
    def test_folder_instead_of_file(self, tmp_path):
        with pytest.raises(CsvFormatError, match="is a folder"):
            read_candle_csv(tmp_path)

    def test_zip_archive(self, tmp_path):
        path = tmp_path / "BTCUSDT-1d-2025-01.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(FIXTURES / "BTCUSDT-1d-2025-01.csv", "BTCUSDT-1d-2025-01.csv")

        with pytest.raises(CsvFormatError, match="unzip it and import the CSV"):
            read_candle_csv(path)

    def test_not_utf8(self, tmp_path):
        path = tmp_path / "Binance_ETHUSDT_d.csv"
        path.write_bytes(CRYPTODATADOWNLOAD_ROWS.encode("utf-16"))

        with pytest.raises(CsvFormatError, match="save the file as a UTF-8 CSV"):
            read_candle_csv(path)

    def test_semicolons(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace(",", ";")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        with pytest.raises(CsvFormatError, match="separate the columns with commas"):
            read_candle_csv(path)

    def test_columns_differing_in_case(self, tmp_path):
        text = "date,open,high,low,close,Close,volume\n2024-01-01,1,2,1,2,2,5\n"
        path = write(tmp_path, "candles.csv", text)

        with pytest.raises(CsvFormatError, match="close appear more than once"):
            read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

    def test_spaces_around_column_names(self, tmp_path):
        lines = CRYPTODATADOWNLOAD_ROWS.splitlines()
        lines[0] = ", ".join(lines[0].split(","))
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", "\n".join(lines))

        assert len(read_candle_csv(path).candles) == 3


class TestFixtureFiles:
    def test_cryptodatadownload_export(self):
        candle_file = read_candle_csv(FIXTURES / "Binance_ETHUSDT_d.csv")
        candles = candle_file.candles

        assert str(candle_file.series) == "binance ETH/USDT 1d"
        assert candles["open_time"].iloc[0] == pd.Timestamp("2025-02-21", tz="UTC")
        assert candles["open_time"].iloc[-1] == pd.Timestamp("2025-02-25", tz="UTC")
        assert list(candles["close"]) == [2390.0, 2400.0, 2450.0, 2500.1, 2550.25]

    def test_binance_dump(self):
        candle_file = read_candle_csv(FIXTURES / "BTCUSDT-1d-2025-01.csv")
        candles = candle_file.candles

        assert str(candle_file.series) == "binance BTC/USDT 1d"
        assert len(candles) == 5
        assert candles["open_time"].iloc[0] == pd.Timestamp("2025-01-01", tz="UTC")
        assert candles["close"].iloc[0] == 94591.79
        assert candles["volume"].iloc[3] == -8990.05651

    def test_yahoo_download(self):
        candle_file = read_candle_csv(FIXTURES / "BTC-USD.csv")
        candles = candle_file.candles.set_index("open_time")

        assert str(candle_file.series) == "yahoo BTC/USD 1d"
        assert len(candles) == 5
        assert candles.loc[pd.Timestamp("2024-03-04", tz="UTC"), "close"] == 68330.41
        null_day = candles.loc[pd.Timestamp("2024-03-03", tz="UTC")]
        assert null_day.isna().all()

    def test_plain_table(self):
        candle_file = read_candle_csv(
            FIXTURES / "candles.csv", exchange="kraken", symbol="BTC/USD"
        )

        assert str(candle_file.series) == "kraken BTC/USD 1d"
        assert len(candle_file.candles) == 4


BINANCE_ROW = (
    "{open_ms},93576.0,95151.15,92888.0,94591.79,10373.32613,{close_ms},"
    "975444564.6,1506394,5180.08258,487209486.05,0"
)
DAY_MS = 86_400_000


def binance_rows(first_open_ms: int, count: int, step_ms: int = DAY_MS) -> str:
    rows = [
        BINANCE_ROW.format(
            open_ms=first_open_ms + index * step_ms,
            close_ms=first_open_ms + (index + 1) * step_ms - 1,
        )
        for index in range(count)
    ]
    return "\n".join(rows) + "\n"


class TestBinanceDumps:
    def test_millisecond_times_before_2025(self, tmp_path):
        path = write(tmp_path, "ETHBTC-1d-2024-12.csv", binance_rows(1733011200000, 3))

        candle_file = read_candle_csv(path)

        assert str(candle_file.series) == "binance ETH/BTC 1d"
        assert candle_file.candles["open_time"].iloc[0] == pd.Timestamp(
            "2024-12-01", tz="UTC"
        )

    def test_daily_file_of_hourly_candles(self, tmp_path):
        text = binance_rows(1735689600000, 24, step_ms=3_600_000)
        path = write(tmp_path, "BTCUSDT-1h-2025-01-01.csv", text)

        candle_file = read_candle_csv(path)

        assert candle_file.series.timeframe == "1h"
        assert len(candle_file.candles) == 24

    def test_single_row_takes_timeframe_from_name(self, tmp_path):
        path = write(
            tmp_path, "BTCUSDT-1d-2025-01-01.csv", binance_rows(1735689600000, 1)
        )

        assert read_candle_csv(path).series.timeframe == "1d"

    def test_header_row_of_futures_dumps(self, tmp_path):
        header = (
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
            "taker_buy_volume,taker_buy_quote_volume,ignore\n"
        )
        path = write(
            tmp_path, "BTCUSDT-1d-2025-01.csv", header + binance_rows(1735689600000, 3)
        )

        candle_file = read_candle_csv(path)

        assert str(candle_file.series) == "binance BTC/USDT 1d"
        assert len(candle_file.candles) == 3

    @pytest.mark.parametrize(
        ("market", "symbol"),
        [
            ("BTCUSDT", "BTC/USDT"),
            ("BTCTUSD", "BTC/TUSD"),
            ("BNBFDUSD", "BNB/FDUSD"),
            ("XRPBTC", "XRP/BTC"),
            ("ADAEUR", "ADA/EUR"),
            ("1000SATSUSDT", "1000SATS/USDT"),
        ],
    )
    def test_symbol_from_market_id(self, tmp_path, market, symbol):
        path = write(
            tmp_path, f"{market}-1d-2025-01.csv", binance_rows(1735689600000, 2)
        )

        assert read_candle_csv(path).series.symbol == symbol

    def test_unknown_quote_asks_for_symbol(self, tmp_path):
        path = write(tmp_path, "ABCXYZ-1d-2025-01.csv", binance_rows(1735689600000, 2))

        with pytest.raises(CsvFormatError, match="import-csv --symbol BASE/QUOTE"):
            read_candle_csv(path)

    def test_symbol_override(self, tmp_path):
        path = write(tmp_path, "ABCXYZ-1d-2025-01.csv", binance_rows(1735689600000, 2))

        candle_file = read_candle_csv(path, exchange="binanceus", symbol="ABC/XYZ")

        assert str(candle_file.series) == "binanceus ABC/XYZ 1d"

    def test_renamed_file_takes_timeframe_from_close_times(self, tmp_path):
        path = write(tmp_path, "january.csv", binance_rows(1735689600000, 3))

        candle_file = read_candle_csv(path, symbol="BTC/USDT")

        assert str(candle_file.series) == "binance BTC/USDT 1d"

    def test_renamed_file_with_unsupported_span(self, tmp_path):
        path = write(tmp_path, "january.csv", binance_rows(1735689600000, 3, 1000))

        with pytest.raises(CsvFormatError, match="candles last 1000 ms"):
            read_candle_csv(path, symbol="BTC/USDT")

    @pytest.mark.parametrize("interval", ["1s", "3d", "1w", "1mo"])
    def test_unsupported_interval(self, tmp_path, interval):
        path = write(
            tmp_path, f"BTCUSDT-{interval}-2025-01.csv", binance_rows(1735689600000, 2)
        )

        with pytest.raises(CsvFormatError, match=f"Binance interval '{interval}'"):
            read_candle_csv(path)

    def test_interval_in_name_differs_from_rows(self, tmp_path):
        path = write(tmp_path, "BTCUSDT-1h-2025-01.csv", binance_rows(1735689600000, 3))

        with pytest.raises(CsvFormatError, match="3 rows do not span one 1h candle"):
            read_candle_csv(path)

    def test_wrong_column_count_without_header(self, tmp_path):
        path = write(
            tmp_path, "BTCUSDT-1d-2025-01.csv", "1735689600000,1,2,0.5,1.5,10\n"
        )

        with pytest.raises(CsvFormatError, match="6 columns without a header"):
            read_candle_csv(path)

    def test_matches_shared_export(self, tmp_path):
        export = read_candle_csv(require_shared_file("Binance_BTCUSDT_d.csv")).candles
        february = export[export["open_time"].dt.strftime("%Y-%m") == "2025-02"]
        opens_us = open_times_ms(february["open_time"]) * 1000
        lines = [
            f"{open_us},{row.open},{row.high},{row.low},{row.close},{row.volume},"
            f"{open_us + DAY_MS * 1000 - 1},0,0,0,0,0"
            for open_us, row in zip(opens_us, february.itertuples(), strict=True)
        ]
        path = write(tmp_path, "BTCUSDT-1d-2025-02.csv", "\n".join(lines) + "\n")

        candles = read_candle_csv(path).candles

        assert len(candles) == 28
        pd.testing.assert_frame_equal(candles, february.reset_index(drop=True))


YAHOO_ROWS = """\
Date,Open,High,Low,Close,Adj Close,Volume
2024-03-01,61168.06,63155.10,60802.53,62440.63,62440.63,40186368423
2024-03-02,62431.65,62458.70,61657.29,62029.85,62029.85,23888473685
"""


class TestYahooDownloads:
    def test_exchange_override(self, tmp_path):
        path = write(tmp_path, "ETH-EUR.csv", YAHOO_ROWS)

        assert str(read_candle_csv(path, exchange="kraken").series) == (
            "kraken ETH/EUR 1d"
        )

    def test_name_without_quote_asks_for_symbol(self, tmp_path):
        path = write(tmp_path, "BTC.csv", YAHOO_ROWS)

        with pytest.raises(CsvFormatError, match="import-csv --symbol BASE/QUOTE"):
            read_candle_csv(path)

    def test_weekly_download_is_not_read(self, tmp_path):
        text = YAHOO_ROWS.replace("2024-03-02", "2024-03-08")
        path = write(tmp_path, "BTC-USD.csv", text)

        with pytest.raises(CsvFormatError, match="unsupported timeframe"):
            read_candle_csv(path)

    def test_null_values_become_missing(self, tmp_path):
        path = write(tmp_path, "BTC-USD.csv", YAHOO_ROWS.replace("62431.65", "null"))

        candles = read_candle_csv(path).candles

        assert np.isnan(candles["open"].iloc[1])
        assert candles["close"].iloc[1] == 62029.85


class TestMixedTimeframes:
    def test_hourly_rows_in_daily_file(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02,10.5,12,10,11,120\n"
            "2024-01-02T01:00:00Z,10.5,12,10,11,120\n"
            "2024-01-03,10.5,12,10,11,120\n"
            "2024-01-04,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        with pytest.raises(CsvFormatError, match="the file mixes timeframes") as error:
            read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

        assert "2 rows open within one 1d candle, first at 2024-01-02 00:00" in str(
            error.value
        )

    def test_lone_unaligned_row_is_left_to_ingest(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02,10.5,12,10,11,120\n"
            "2024-01-03T05:00:00Z,10.5,12,10,11,120\n"
            "2024-01-04,10.5,12,10,11,120\n"
            "2024-01-05,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        candle_file = read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

        assert candle_file.series.timeframe == "1d"
        assert len(candle_file.candles) == 5
