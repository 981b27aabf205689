"""Where each supervisor's children are right now: a path lookup without a message.

Erlang sends to a registered name without going through the supervisor: the
name table says which process has it now. Here every supervisor publishes
its children's current refs in a listing, keyed by the supervisor's actor
URN (refs change on every restart, URNs of supervisors are what a caller
can hold). :func:`~tickvisor.supervision.supervisor.route` walks a path
through the listings and asks the child directly: one mailbox hop, as with
a raw pykka ``ask``. Only when a hop is missing or dead does it fall back to
asking the supervisors, which answer with the precise error.

Only the supervisor writes its listing, from its own thread; readers take a
snapshot reference under the GIL, so a lookup never waits for a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pykka

_lock = threading.Lock()
_listings: dict[str, dict[str, pykka.ActorRef[Any]]] = {}


class Listing:
    """One supervisor's children by name; written only by that supervisor."""

    def __init__(self, supervisor_urn: str) -> None:
        self.supervisor_urn = supervisor_urn
        self._children: dict[str, pykka.ActorRef[Any]] = {}
        with _lock:
            _listings[supervisor_urn] = self._children

    def publish(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        """``ref`` is where ``name`` runs now; None: it does not run."""
        if ref is None:
            self._children.pop(name, None)
        else:
            self._children[name] = ref

    def close(self) -> None:
        with _lock:
            _listings.pop(self.supervisor_urn, None)


def resolve(supervisor: pykka.ActorRef[Any], path: Sequence[str]) -> Any:
    """The live ref at ``path`` under ``supervisor``, or None if any hop is unknown or dead."""
    current = supervisor
    for name in path:
        listing = _listings.get(current.actor_urn)
        found = listing.get(name) if listing is not None else None
        if found is None or not found.is_alive():
            return None
        current = found
    return current
