"""Daily candles in, LSTM forecasts out: the library behind the btc-lstm flows."""

__version__ = "0.1.0"
