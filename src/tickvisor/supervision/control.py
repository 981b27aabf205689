"""Control: the Python API for steering a running tree by path (``services/candles``).

Refs change on every restart, so nothing here holds one: each call looks
the path up in the supervisors' listings of their current children
(:mod:`~tickvisor.supervision.directory`), or asks the supervisors. Requests
that change what a supervisor does with a child (pause, resume, restart,
stop, start) go to the child's supervisor; requests for the service itself
(invalidate its cache, reset its breaker, metrics) are routed to the child.

Errors are typed for the admin API: :class:`NoSuchChild` (404) and
:class:`InvalidChildState` (409). Every call has a timeout.
"""

from __future__ import annotations

from typing import Any

import pykka

from tickvisor.messages import (
    CountChildren,
    DeleteChild,
    GetMetrics,
    GetStatus,
    InvalidateCache,
    PauseChild,
    ReconfigureChild,
    ResetBreaker,
    RestartChild,
    ResumeChild,
    StartChild,
    TerminateChild,
    WhereIs,
    WhichChildren,
)
from tickvisor.supervision.spec import ChildSpec
from tickvisor.supervision.supervisor import InvalidChildState, NoSuchChild, route

__all__ = ["Control", "InvalidChildState", "NoSuchChild"]


class Control:
    """Operator requests against the tree under ``root``; ``timeout`` bounds each call."""

    def __init__(self, root: pykka.ActorRef[Any], timeout: float = 10.0) -> None:
        self.root = root
        self.timeout = timeout

    # --- supervisor decisions --------------------------------------------------

    def pause(self, path: str, reason: str = "operator") -> dict[str, Any]:
        """Stop iterating (kept across restarts) until :meth:`resume`."""
        parent, name = _split(path)
        return self._node(parent, PauseChild(name, reason))

    def resume(self, path: str, reason: str = "operator") -> dict[str, Any]:
        parent, name = _split(path)
        return self._node(parent, ResumeChild(name, reason))

    def restart(self, path: str, reason: str = "operator") -> dict[str, Any]:
        """A fresh instance now (a new generation); not counted against intensity."""
        parent, name = _split(path)
        return self._node(parent, RestartChild(name, reason))

    def stop(self, path: str, reason: str = "operator") -> dict[str, Any]:
        """Stop the child and keep its spec: it stays down until :meth:`start`."""
        parent, name = _split(path)
        return self._node(parent, TerminateChild(name, reason))

    def start(self, path: str) -> dict[str, Any]:
        """Start a stopped child again."""
        parent, name = _split(path)
        return self._node(parent, StartChild(name))

    def reconfigure(
        self, path: str, config: object, *, restart: bool = False, reason: str = "config_reloaded"
    ) -> dict[str, Any]:
        """Give a child a new config, kept across its restarts; ``restart`` replaces it now.

        Without ``restart`` the running instance takes over what it can
        change live (:class:`~tickvisor.messages.ApplyConfig`).
        """
        parent, name = _split(path)
        return self._node(parent, ReconfigureChild(name, config, restart, reason))

    def start_child(self, supervisor_path: str, spec: ChildSpec) -> dict[str, Any]:
        """Add a new child under a supervisor and start it (OTP's ``start_child``)."""
        return self._node(_parts(supervisor_path), StartChild(spec.name, spec))

    def delete_child(self, path: str) -> dict[str, Any]:
        parent, name = _split(path)
        return self._node(parent, DeleteChild(name))

    def which_children(self, supervisor_path: str = "") -> list[dict[str, Any]]:
        children: list[dict[str, Any]] = self._ask(_parts(supervisor_path), WhichChildren())
        return children

    def count_children(self, supervisor_path: str = "") -> dict[str, int]:
        counts: dict[str, int] = self._ask(_parts(supervisor_path), CountChildren())
        return counts

    # --- the service itself ----------------------------------------------------

    def invalidate_cache(self, path: str) -> None:
        self._ask(_parts(path), InvalidateCache())

    def reset_breaker(self, path: str) -> dict[str, Any]:
        return self._node(_parts(path), ResetBreaker())

    def metrics(self, path: str) -> dict[str, Any]:
        return self._node(_parts(path), GetMetrics())

    def send(self, path: str, message: object) -> Any:
        """Ask the actor at ``path`` anything and return its reply."""
        return route(self.root, _parts(path), message, timeout=self.timeout)

    def tell(self, path: str, message: object) -> None:
        """Deliver ``message`` to the actor at ``path`` without waiting for it.

        Unlike :meth:`send`, an exception the message raises is the actor's
        own failure (pykka stops it and its supervisor takes over), which is
        what a chaos drill such as :class:`~tickvisor.messages.Crash` wants.
        """
        parent, name = _split(path)
        ref: pykka.ActorRef[Any] = self._ask(parent, WhereIs(name))
        ref.tell(message)

    # --- the tree --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The whole tree: each supervisor's node, its children nested under ``children``.

        Assembled here, one supervisor at a time, so no supervisor ever
        waits on another to answer.
        """
        return self._status([])

    def _status(self, path: list[str]) -> dict[str, Any]:
        node = self._node(path, GetStatus())
        for child in node["children"]:
            if child["is_supervisor"] and child["alive"]:
                try:
                    sub = self._status([*path, child["name"]])
                except (pykka.Timeout, pykka.ActorDeadError, InvalidChildState) as exc:
                    child["error"] = f"{type(exc).__name__}: {exc}"
                    continue
                child.update({k: v for k, v in sub.items() if k not in ("name", "path")})
        return node

    def _ask(self, path: list[str], message: object) -> Any:
        return route(self.root, path, message, timeout=self.timeout)

    def _node(self, path: list[str], message: object) -> dict[str, Any]:
        reply: dict[str, Any] = self._ask(path, message)
        return reply


def _parts(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


def _split(path: str) -> tuple[list[str], str]:
    parts = _parts(path)
    if not parts:
        raise ValueError("a child path is needed, such as 'services/candles'")
    return parts[:-1], parts[-1]
