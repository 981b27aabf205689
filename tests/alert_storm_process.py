"""A tickvisor alerting subtree in a process of its own, for the SIGKILL test.

``python tests/alert_storm_process.py CONFIG_JSON storm|drain``

``storm`` publishes breaker transitions from many services as fast as it
can, then keeps running until it is killed. ``drain`` publishes nothing: it
starts the subtree (which recovers the outbox) and runs until killed.
Both print ``published N`` / ``started`` on stdout so the test knows where
the process is.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from tickvisor.clock import RealClock, ThreadScheduler
from tickvisor.config import TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.logs import configure_logging
from tickvisor.messages import BreakerTransition, Ping
from tickvisor.store.engine import open_database
from tickvisor.supervision.tree import start_alerting

CYCLE = (("closed", "open"), ("open", "half_open"), ("half_open", "closed"))


def main() -> None:
    settings = json.loads(sys.argv[1])
    mode = sys.argv[2]
    configure_logging("json", "WARNING", stream=sys.stderr)  # stdout is for the test
    config = TickvisorConfig.model_validate(settings["config"])
    engine = open_database(settings["db"])
    clock = RealClock()
    scheduler = ThreadScheduler(clock)
    bus = EventBus()
    root = start_alerting(
        config,
        engine=engine,
        clock=clock,
        scheduler=scheduler,
        bus=bus,
        closing=threading.Event(),
    )
    root.ask(Ping(), timeout=30)  # answered once every child has started
    print("started", flush=True)
    if mode == "storm":
        count = 0
        for i in range(settings["transitions"]):
            service = f"svc{i % settings['services']:02d}"
            frm, to = CYCLE[(i // settings["services"]) % 3]
            bus.tell(BreakerTransition(service, frm, to, 5, "storm", clock.time(), 1.0, 1))
            count += 1
        print(f"published {count}", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
