"""Loopback HTTP servers that imitate the public REST APIs of Binance and Kraken.

Each server responds in its exchange's own JSON format, so ccxt's real HTTP client
and parsers run against it:

- Binance spot: `GET /api/v3/exchangeInfo` and `GET /api/v3/klines`. A klines
  page holds up to `limit` candles (500 by default, 1000 at most) that open at or
  after `startTime`, oldest first.
- Kraken: `GET /0/public/Assets`, `GET /0/public/AssetPairs` and
  `GET /0/public/OHLC`. An OHLC answer holds only the 720 most recent candles,
  of which those newer than `since` (in seconds) are returned, and a `last`
  cursor. Older history cannot be reached, whatever `since` requests.

Candles come from frames the test supplies. The candle that contains the server's
clock is served still open, as both exchanges do. `Faults` switches on the ways
real exchanges misbehave, per test.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
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
KRAKEN_MAX_CANDLES = 720
KRAKEN_INTERVAL_MINUTES = {60: 3_600_000, 240: 14_400_000, 1440: DAY_MS}
# Kraken's own asset ids and the names it shows; ccxt maps XBT to BTC.
KRAKEN_ALTNAMES = {"XXBT": "XBT", "XETH": "ETH", "ZUSD": "USD", "ZEUR": "EUR"}

# Kinds of periodic fault that `Faults.every` switches on.
RATE_LIMIT = "rate_limit"
SERVER_ERROR = "server_error"
MAINTENANCE = "maintenance"
SLOW = "slow"
MALFORMED = "malformed"
BAD_REQUEST = "bad_request"


@dataclass
class Faults:
    """Misbehaviour of the candle endpoint, counted in candle requests from 1."""

    # Candle requests number `every`, 2 * `every`, ... get the fault `kind`.
    every: int = 0
    kind: str = RATE_LIMIT
    # How long a SLOW response waits before it is sent.
    slow_seconds: float = 0.0
    newest_first: bool = False
    # Each page starts this many candles before the requested start.
    overlap_candles: int = 0
    # Binance pages cover `limit` candles' worth of time from the start, as the
    # start/end parameters of Bitstamp or Coinbase do, so that a hole longer
    # than a page gives an empty page.
    window_pages: bool = False
    # Binance serves its oldest candles whatever start is requested, as a broken
    # mirror might.
    ignore_start: bool = False
    # Candles that are never served, and candles left out of one response only.
    missing_open_times: set[pd.Timestamp] = field(default_factory=set)
    flaky_open_times: set[pd.Timestamp] = field(default_factory=set)
    # Exchange market ids listed in the markets whose candles are refused.
    rejected_market_ids: set[str] = field(default_factory=set)
    # The market ids that the faults above apply to; empty means all.
    only_market_ids: set[str] = field(default_factory=set)

    def apply_to(self, market_id: str) -> bool:
        return not self.only_market_ids or market_id in self.only_market_ids


@dataclass
class ExchangeState:
    """What a fake exchange serves and what it was asked."""

    # Exchange market id such as "BTCUSDT" or "XXBTZUSD" -> (base id, quote id,
    # candle frame with CANDLE_COLUMNS).
    markets: dict[str, tuple[str, str, pd.DataFrame]] = field(default_factory=dict)
    now_ms: int = 0
    requests: list[str] = field(default_factory=list)
    # When set, every request gets this HTTP status and body instead.
    failure: tuple[int, str] | None = None
    faults: Faults = field(default_factory=Faults)
    candle_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


BinanceState = ExchangeState
KrakenState = ExchangeState


class _Handler(BaseHTTPRequestHandler):
    state: ExchangeState
    candle_path = ""
    # The query parameter of the candle endpoint that names the market.
    market_parameter = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        url = urlparse(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with self.state.lock:
            self.state.requests.append(self.path)
            request_number = 0
            market_id = query.get(self.market_parameter, "")
            if url.path == self.candle_path and self.state.faults.apply_to(market_id):
                self.state.candle_requests += 1
                request_number = self.state.candle_requests
        if self.state.failure is not None:
            status, body = self.state.failure
            self._send(status, body)
        elif request_number and self._fault_answer(request_number):
            return
        else:
            self.route(url.path, query)

    def route(self, path: str, query: dict[str, str]) -> None:
        raise NotImplementedError

    def fault_body(self, kind: str) -> tuple[int, str]:
        raise NotImplementedError

    def _fault_answer(self, request_number: int) -> bool:
        """Send the periodic fault due for this request; return whether one was."""
        faults = self.state.faults
        if not faults.every or request_number % faults.every != 0:
            return False
        if faults.kind == SLOW:
            time.sleep(faults.slow_seconds)
            return False
        if faults.kind == MALFORMED:
            self._send(200, '[[1640995200000,"46216.93000000","47954.63')
            return True
        self._send(*self.fault_body(faults.kind))
        return True

    def page_candles(
        self,
        market_id: str,
        candles: pd.DataFrame,
        interval_ms: int,
        start_ms: int,
        select: Callable[[pd.DataFrame], pd.DataFrame],
    ) -> pd.DataFrame:
        """Return the page of candles that `select` picks from those that exist by
        the server's clock from `start_ms` on, with the faults applied.

        Missing candles take no place in the page; a flaky candle takes its place
        but is left out of this one response.
        """
        faults = self.state.faults
        if not faults.apply_to(market_id):
            faults = Faults()
        start_ms -= faults.overlap_candles * interval_ms
        opens_ms = open_times_ms(candles["open_time"])
        existing = candles[(opens_ms >= start_ms) & (opens_ms <= self.state.now_ms)]
        page = select(existing[~existing["open_time"].isin(faults.missing_open_times)])
        with self.state.lock:
            flaky = page["open_time"].isin(faults.flaky_open_times)
            faults.flaky_open_times -= set(page.loc[flaky, "open_time"])
        return page[~flaky]

    def order_page(self, rows: list[Any]) -> list[Any]:
        return rows[::-1] if self.state.faults.newest_first else rows

    def _send(self, status: int, body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The client gave up waiting, as after a timeout.

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _price_text(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _served_prices(row: Any, open_ms: int, interval_ms: int, now_ms: int) -> Any:
    """Return (high, close) as served: a candle still forming has only part."""
    if open_ms + interval_ms > now_ms:
        return max(row.open, row.low), row.open
    return row.high, row.close


class _BinanceHandler(_Handler):
    candle_path = "/api/v3/klines"
    market_parameter = "symbol"

    def route(self, path: str, query: dict[str, str]) -> None:
        if path == "/api/v3/exchangeInfo":
            self._send(200, json.dumps(self._exchange_info()))
        elif path == self.candle_path:
            self._klines(query)
        else:
            self._send(404, json.dumps({"code": -1, "msg": f"no route {path}"}))

    def fault_body(self, kind: str) -> tuple[int, str]:
        if kind == RATE_LIMIT:
            return 429, '{"code":-1003,"msg":"Too many requests."}'
        if kind == MAINTENANCE:
            return 503, '{"code":-1008,"msg":"System is under maintenance."}'
        if kind == BAD_REQUEST:
            return 400, (
                '{"code":-1100,"msg":"Illegal characters found in parameter '
                "'startTime'; legal range is '^[0-9]{1,20}$'.\"}"
            )
        return 502, "<html><body><h1>502 Bad Gateway</h1></body></html>"

    def _klines(self, query: dict[str, str]) -> None:
        market_id = query.get("symbol", "")
        market = self.state.markets.get(market_id)
        interval_ms = INTERVAL_MS.get(query.get("interval", ""))
        if market is None or market_id in self.state.faults.rejected_market_ids:
            self._send(400, json.dumps({"code": -1121, "msg": "Invalid symbol."}))
            return
        if interval_ms is None:
            self._send(400, json.dumps({"code": -1120, "msg": "Invalid interval."}))
            return
        limit = min(int(query.get("limit", BINANCE_DEFAULT_LIMIT)), BINANCE_MAX_LIMIT)
        start_ms = int(query.get("startTime", 0))
        if self.state.faults.ignore_start:
            start_ms = 0
        end_ms = int(query.get("endTime", 2**62))
        if self.state.faults.window_pages:
            end_ms = min(end_ms, start_ms + limit * interval_ms - 1)
        page = self.page_candles(
            market_id,
            market[2],
            interval_ms,
            start_ms,
            lambda existing: existing[
                open_times_ms(existing["open_time"]) <= end_ms
            ].head(limit),
        )
        rows = [self._kline(row, interval_ms) for row in page.itertuples()]
        self._send(200, json.dumps(self.order_page(rows)))

    def _kline(self, row: Any, interval_ms: int) -> list[Any]:
        open_ms = int(row.open_time.timestamp() * 1000)
        high, close = _served_prices(row, open_ms, interval_ms, self.state.now_ms)
        return [
            open_ms,
            _price_text(row.open, 8),
            _price_text(high, 8),
            _price_text(row.low, 8),
            _price_text(close, 8),
            _price_text(row.volume, 8),
            open_ms + interval_ms - 1,
            _price_text(row.volume * close, 8),
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


class _KrakenHandler(_Handler):
    candle_path = "/0/public/OHLC"
    market_parameter = "pair"
    price_decimals = 5

    def route(self, path: str, query: dict[str, str]) -> None:
        if path == "/0/public/Assets":
            self._send(200, json.dumps({"error": [], "result": self._assets()}))
        elif path == "/0/public/AssetPairs":
            self._send(200, json.dumps({"error": [], "result": self._asset_pairs()}))
        elif path == self.candle_path:
            self._ohlc(query)
        else:
            self._send(404, json.dumps({"error": ["EGeneral:Unknown method"]}))

    def fault_body(self, kind: str) -> tuple[int, str]:
        # Kraken reports its own limits and outages with HTTP 200 and an error list.
        if kind == RATE_LIMIT:
            return 200, '{"error":["EAPI:Rate limit exceeded"]}'
        if kind == MAINTENANCE:
            return 200, '{"error":["EService:Unavailable"]}'
        if kind == BAD_REQUEST:
            return 200, '{"error":["EGeneral:Invalid arguments"]}'
        return 520, "<html><body>520: Web server is returning an unknown error"

    def _ohlc(self, query: dict[str, str]) -> None:
        pair = query.get("pair", "")
        market = self.state.markets.get(pair)
        if market is None or pair in self.state.faults.rejected_market_ids:
            self._send(200, json.dumps({"error": ["EQuery:Unknown asset pair"]}))
            return
        interval_ms = KRAKEN_INTERVAL_MINUTES.get(int(query.get("interval", "1")))
        if interval_ms is None:
            self._send(200, json.dumps({"error": ["EGeneral:Invalid arguments"]}))
            return
        # Kraken keeps only the newest 720 candles, and `since` (in seconds,
        # exclusive) then filters them.
        since_ms = int(query.get("since", "0")) * 1000
        overlap_candles = (
            self.state.faults.overlap_candles if self.state.faults.apply_to(pair) else 0
        )
        start_ms = since_ms + 1 - overlap_candles * interval_ms

        def newest_after_since(existing: pd.DataFrame) -> pd.DataFrame:
            recent = existing.tail(KRAKEN_MAX_CANDLES)
            return recent[open_times_ms(recent["open_time"]) >= start_ms]

        served = self.page_candles(pair, market[2], interval_ms, 0, newest_after_since)
        rows = [self._entry(row, interval_ms) for row in served.itertuples()]

        # `last` is the open time of the newest closed candle, the cursor that
        # Kraken offers for polling.
        closed_opens_s = [
            row[0] for row in rows if row[0] * 1000 + interval_ms <= self.state.now_ms
        ]
        last = max(closed_opens_s) if closed_opens_s else since_ms // 1000
        result = {pair: self.order_page(rows), "last": last}
        self._send(200, json.dumps({"error": [], "result": result}))

    def _entry(self, row: Any, interval_ms: int) -> list[Any]:
        open_ms = int(row.open_time.timestamp() * 1000)
        high, close = _served_prices(row, open_ms, interval_ms, self.state.now_ms)
        decimals = self.price_decimals
        return [
            open_ms // 1000,
            _price_text(row.open, decimals),
            _price_text(high, decimals),
            _price_text(row.low, decimals),
            _price_text(close, decimals),
            _price_text((row.open + close) / 2, decimals),
            _price_text(row.volume, 8),
            100,
        ]

    def _assets(self) -> dict[str, Any]:
        asset_ids = {
            asset_id
            for base, quote, _ in self.state.markets.values()
            for asset_id in (base, quote)
        }
        return {
            asset_id: {
                "aclass": "currency",
                "altname": KRAKEN_ALTNAMES.get(asset_id, asset_id),
                "decimals": 10,
                "display_decimals": 5,
                "status": "enabled",
            }
            for asset_id in sorted(asset_ids)
        }

    def _asset_pairs(self) -> dict[str, Any]:
        pairs = {}
        for pair, (base, quote, _) in self.state.markets.items():
            base_name = KRAKEN_ALTNAMES.get(base, base)
            quote_name = KRAKEN_ALTNAMES.get(quote, quote)
            pairs[pair] = {
                "altname": base_name + quote_name,
                "wsname": f"{base_name}/{quote_name}",
                "aclass_base": "currency",
                "base": base,
                "aclass_quote": "currency",
                "quote": quote,
                "lot": "unit",
                "cost_decimals": 5,
                "pair_decimals": self.price_decimals,
                "lot_decimals": 8,
                "lot_multiplier": 1,
                "leverage_buy": [2, 3],
                "leverage_sell": [2, 3],
                "fees": [[0, 0.26], [50000, 0.24]],
                "fees_maker": [[0, 0.16], [50000, 0.14]],
                "fee_volume_currency": "ZUSD",
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": "0.00005",
                "costmin": "0.5",
                "tick_size": "0.00001",
                "status": "online",
            }
        return pairs


@contextmanager
def _serve(handler_class: type[_Handler], state: ExchangeState) -> Iterator[str]:
    handler = type("Handler", (handler_class,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def run_binance_server(state: ExchangeState) -> Iterator[str]:
    """Serve `state` on a free loopback port; yield the base URL of the spot API."""
    with _serve(_BinanceHandler, state) as base_url:
        yield f"{base_url}/api/v3"


@contextmanager
def run_kraken_server(state: ExchangeState) -> Iterator[str]:
    """Serve `state` as Kraken on a free loopback port; yield the API's base URL."""
    with _serve(_KrakenHandler, state) as base_url:
        yield base_url


def binance_ccxt_config(api_url: str) -> dict[str, Any]:
    """Return the ccxt config that points Binance's spot API at the loopback server."""
    return {
        "urls": {"api": {"public": api_url}},
        "options": {"fetchMarkets": {"types": ["spot"]}},
    }


def kraken_ccxt_config(api_url: str) -> dict[str, Any]:
    """Return the ccxt config that points Kraken's public API at the loopback server.

    Kraken's real rate limit in ccxt is one request per second; the loopback
    server has none, so the tests wait 10 ms between requests.
    """
    return {"urls": {"api": {"public": api_url}}, "rateLimit": 10}
