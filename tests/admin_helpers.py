"""A running tree with its admin API, and ways to read what the API serves.

The tree runs on the fake clock and stepped scheduler, so iterations happen
only when a test steps time; the HTTP server is real (uvicorn on a loopback
port picked by the kernel) and so are the requests.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pykka
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import Engine

from actor_helpers import wait_for
from tickvisor.admin import AdminServer, start_admin
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import TickvisorConfig
from tickvisor.supervision import Control, InvalidChildState, NoSuchChild
from tickvisor.supervision.tree import build_tree

ASK = 10.0
TOKEN = "test-admin-token-7f3a9c2e51d04b8a"


class AdminRig:
    """``build_tree(config)`` plus ``start_admin(port=0)`` and an HTTP client for it."""

    def __init__(
        self,
        config: TickvisorConfig,
        *,
        engine: Engine,
        clock: FakeClock,
        scheduler: SteppedScheduler,
        token: str = TOKEN,
    ) -> None:
        self.config, self.engine, self.clock, self.scheduler = config, engine, clock, scheduler
        self.root: pykka.ActorRef[Any] = build_tree(
            config, engine=engine, clock=clock, scheduler=scheduler
        )
        self.control = Control(self.root, timeout=ASK)
        self.server: AdminServer = start_admin(
            self.root, config, token=token, port=0, engine=engine, ask_timeout=ASK
        )
        self.http = httpx.Client(base_url=self.server.url, timeout=ASK)
        self.auth = {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        with contextlib.suppress(pykka.Timeout):
            self.root.stop(block=True, timeout=ASK)

    # --- the tree -------------------------------------------------------------

    def metrics(self, service: str = "candles") -> dict[str, Any]:
        return self.control.metrics(f"services/{service}")

    def iterations(self, service: str = "candles") -> int:
        try:
            count: int = self.metrics(service)["iteration_count"]
        except (InvalidChildState, NoSuchChild, pykka.ActorDeadError):
            return -1
        return count

    def step(self, service: str = "candles", times: int = 1) -> None:
        """Let ``times`` scheduled iterations run, one interval of fake time each."""
        interval = getattr(self.config.services, service).interval_seconds
        for _ in range(times):
            before = self.iterations(service)
            self.scheduler.advance(interval)
            wait_for(lambda b=before: self.iterations(service) > b, f"an iteration of {service}")

    def wait_state(self, state: str, service: str = "candles") -> None:
        def reached() -> bool:
            children = self.control.which_children("services")
            return any(c["name"] == service and c["state"] == state for c in children)

        wait_for(reached, f"{service} {state}")

    # --- the HTTP API -----------------------------------------------------------

    def scrape(self) -> list[Sample]:
        """Every sample ``GET /metrics`` serves, parsed by prometheus_client's own parser."""
        response = self.http.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return [
            s for family in text_string_to_metric_families(response.text) for s in family.samples
        ]

    def families(self) -> set[str]:
        response = self.http.get("/metrics")
        return {family.name for family in text_string_to_metric_families(response.text)}

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels (0 if absent: not counted yet)."""
        return sample(self.scrape(), name, **labels)


def sample(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} is served {len(found)} times"
    return found[0] if found else 0.0
