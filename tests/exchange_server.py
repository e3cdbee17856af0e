"""A loopback HTTP server that imitates Binance's spot REST API.

It serves `GET /api/v3/exchangeInfo` and `GET /api/v3/klines` in Binance's own JSON
format, so ccxt's real HTTP client and parsers run against it. Candles come from
frames the test supplies; the candle that contains the server's clock is served
still open, as Binance does.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd

from btc_lstm.candles import open_times_ms

DAY_MS = 86_400_000
INTERVAL_MS = {"1h": 3_600_000, "4h": 14_400_000, "1d": DAY_MS}
BINANCE_MAX_LIMIT = 1000
BINANCE_DEFAULT_LIMIT = 500


@dataclass
class BinanceState:
    """What the fake exchange serves and what it was asked."""

    # Binance id such as "BTCUSDT" -> (base, quote, candle frame with CANDLE_COLUMNS)
    markets: dict[str, tuple[str, str, pd.DataFrame]] = field(default_factory=dict)
    now_ms: int = 0
    requests: list[str] = field(default_factory=list)
    # When set, every request gets this HTTP status and body instead.
    failure: tuple[int, str] | None = None


class _Handler(BaseHTTPRequestHandler):
    state: BinanceState

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        url = urlparse(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.state.requests.append(self.path)
        if self.state.failure is not None:
            status, body = self.state.failure
            self._send(status, body)
        elif url.path == "/api/v3/exchangeInfo":
            self._send(200, json.dumps(self._exchange_info()))
        elif url.path == "/api/v3/klines":
            self._klines(query)
        else:
            self._send(404, json.dumps({"code": -1, "msg": f"no route {url.path}"}))

    def _klines(self, query: dict[str, str]) -> None:
        market = self.state.markets.get(query.get("symbol", ""))
        interval_ms = INTERVAL_MS.get(query.get("interval", ""))
        if market is None:
            self._send(400, json.dumps({"code": -1121, "msg": "Invalid symbol."}))
            return
        if interval_ms is None:
            self._send(400, json.dumps({"code": -1120, "msg": "Invalid interval."}))
            return
        limit = min(int(query.get("limit", BINANCE_DEFAULT_LIMIT)), BINANCE_MAX_LIMIT)
        start_ms = int(query.get("startTime", 0))
        end_ms = int(query.get("endTime", 2**62))
        candles = market[2]
        opens_ms = open_times_ms(candles["open_time"])
        visible = candles[
            (opens_ms >= start_ms)
            & (opens_ms <= end_ms)
            & (opens_ms <= self.state.now_ms)
        ].head(limit)
        self._send(
            200,
            json.dumps([self._kline(row, interval_ms) for row in visible.itertuples()]),
        )

    def _kline(self, row: Any, interval_ms: int) -> list[Any]:
        open_ms = int(row.open_time.timestamp() * 1000)
        close = row.close
        high = row.high
        if open_ms + interval_ms > self.state.now_ms:
            # The current candle is still forming: only part of its range is known.
            close = row.open
            high = max(row.open, row.low)
        return [
            open_ms,
            f"{row.open:.8f}",
            f"{high:.8f}",
            f"{row.low:.8f}",
            f"{close:.8f}",
            f"{row.volume:.8f}",
            open_ms + interval_ms - 1,
            f"{row.volume * close:.8f}",
            1000,
            "0.00000000",
            "0.00000000",
            "0",
        ]

    def _exchange_info(self) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": self.state.now_ms,
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [
                {
                    "symbol": market_id,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "MARKET"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": "0.01000000",
                            "maxPrice": "1000000.00000000",
                            "tickSize": "0.01000000",
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": "0.00001000",
                            "maxQty": "9000.00000000",
                            "stepSize": "0.00001000",
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                }
                for market_id, (base, quote, _) in self.state.markets.items()
            ],
        }

    def _send(self, status: int, body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def run_binance_server(state: BinanceState) -> Iterator[str]:
    """Serve `state` on a free loopback port; yield the base URL of the spot API."""
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v3"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def binance_ccxt_config(api_url: str) -> dict[str, Any]:
    """Return the ccxt config that points Binance's spot API at the loopback server."""
    return {
        "urls": {"api": {"public": api_url}},
        "options": {"fetchMarkets": {"types": ["spot"]}},
    }
