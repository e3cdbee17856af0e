from pathlib import Path

import pandas as pd
import pytest

from btc_lstm.csv_import import read_candle_csv
from btc_lstm.errors import CsvFormatError

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

        with pytest.raises(CsvFormatError, match="not an OHLCV file"):
            read_candle_csv(path)

    def test_empty_file(self, tmp_path):
        path = write(tmp_path, "Binance_empty.csv", "")

        with pytest.raises(CsvFormatError, match="not a readable CSV"):
            read_candle_csv(path)

    def test_negative_price_names_row(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace("2450.0,2520.0", "-2450.0,2520.0")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        with pytest.raises(
            CsvFormatError, match="2025-02-24 00:00: price not positive"
        ):
            read_candle_csv(path)

    def test_high_below_close(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace("2400.0,2460.0", "2400.0,2400.0")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        with pytest.raises(CsvFormatError, match="high below open, close or low"):
            read_candle_csv(path)

    def test_text_in_price(self, tmp_path):
        text = CRYPTODATADOWNLOAD_ROWS.replace("2550.0,10.0", "n/a,10.0")
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", text)

        with pytest.raises(CsvFormatError, match="missing or non-finite value"):
            read_candle_csv(path)

    def test_duplicate_days(self, tmp_path):
        lines = CRYPTODATADOWNLOAD_ROWS.splitlines()
        path = write(tmp_path, "Binance_ETHUSDT_d.csv", "\n".join([*lines, lines[2]]))

        with pytest.raises(CsvFormatError, match="share an open time"):
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

    def test_future_candle_is_rejected(self, tmp_path):
        text = (
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02,10.5,12,10,11,120\n"
            "2024-01-03,10.5,12,10,11,120\n"
            "2099-01-02,10.5,12,10,11,120\n"
        )
        path = write(tmp_path, "candles.csv", text)

        with pytest.raises(CsvFormatError, match="1 candles open in the future"):
            read_candle_csv(path, exchange="binance", symbol="BTC/USDT")

    def test_unfinished_candle_is_skipped(self, tmp_path):
        today = pd.Timestamp.now(tz="UTC").normalize()
        days = pd.date_range(end=today, periods=3, freq="D")
        rows = [f"{day:%Y-%m-%d},10,11,9,10.5,100" for day in days]
        path = write(
            tmp_path,
            "candles.csv",
            "date,open,high,low,close,volume\n" + "\n".join(rows) + "\n",
        )

        candles = read_candle_csv(path, exchange="binance", symbol="BTC/USDT").candles

        assert list(candles["open_time"]) == list(days[:2])

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
