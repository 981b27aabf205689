"""A database lost while running: iterations fail, the breaker opens, the service recovers.

The loss is real: the service talks to PostgreSQL through a TCP proxy on
loopback, and the test cuts and restores the proxy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tickvisor.actors.candles import CandleService
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import BreakerConfig, CandleServiceConfig
from tickvisor.messages import GetMetrics
from tickvisor.store.engine import make_engine, open_database
from tickvisor.store.schema import candles
from tickvisor.store.ticks import insert_ticks

pytestmark = pytest.mark.postgres
ASK = 15.0


class CuttableProxy:
    """Forwards loopback TCP to a target; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[CuttableProxy]:
    url = make_url(pg_url)
    p = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    yield p
    p.close()


def test_service_survives_database_loss_and_recovers(pg_url: str, proxy: CuttableProxy) -> None:
    direct = open_database(pg_url)
    with direct.begin() as conn:
        conn.execute(candles.delete())
        conn.execute(sa.text("DELETE FROM ticks"))
        conn.execute(sa.text("DELETE FROM progress_cursors"))
        insert_ticks(conn, [{"symbol": "EUR/USD", "ts_ms": 60_000, "bid": 1.0, "ask": 1.2}])
    proxied_url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    engine = make_engine(proxied_url.render_as_string(hide_password=False))
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    config = CandleServiceConfig(
        interval_seconds=5.0,
        symbols=["EUR/USD"],
        timeframes=["1m"],
        breaker=BreakerConfig(failure_threshold=2, timeout=30.0),
    )
    ref = CandleService.start("candles", config, engine=engine, clock=clock, scheduler=scheduler)

    def step(seconds: float) -> dict[str, Any]:
        scheduler.advance(seconds)
        result: dict[str, Any] = ref.ask(GetMetrics(), timeout=ASK)
        return result

    try:
        assert step(0)["error_count"] == 0
        proxy.cut()
        step(5.0)
        m = step(5.0)
        assert m["error_count"] == 2
        assert m["circuit_breaker_state"] == "open"
        assert m["is_running"]
        with direct.begin() as conn:  # ticks keep arriving while the service is cut off
            insert_ticks(conn, [{"symbol": "EUR/USD", "ts_ms": 120_000, "bid": 2.0, "ask": 2.0}])
        proxy.restore()
        for _ in range(6):
            m = step(5.0)
        assert m["circuit_breaker_state"] == "closed"
        with direct.connect() as conn:
            rows = conn.execute(sa.select(candles.c.ts_ms, candles.c.close)).all()
        assert sorted(rows) == [(60_000, 1.1), (120_000, 2.0)]
    finally:
        ref.stop(timeout=ASK)
        pykka.ActorRegistry.stop_all(timeout=ASK)
        scheduler.stop()
        engine.dispose()
        direct.dispose()
