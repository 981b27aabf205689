"""Service health, derived from what the tree reports: pure functions, no I/O.

A supervisor only knows whether a child runs; a service that runs but fails
every iteration is running and useless. So health combines the supervisor's
view (state, operator or breaker hold, last exit) with the service's own
metrics (its breaker, its recent error rate). Kept apart from the HTTP layer
so the rules can be read, and tested, in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tickvisor.supervision.tree import SERVICES

__all__ = [
    "DEGRADED",
    "DEGRADED_ERROR_RATE",
    "HEALTHY",
    "PAUSED",
    "RESTARTING",
    "STOPPED",
    "overall_status",
    "readiness_problems",
    "service_health",
    "services_node",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
PAUSED = "paused"
RESTARTING = "restarting"
STOPPED = "stopped"

#: A service failing more than this share of its recent iterations is degraded.
DEGRADED_ERROR_RATE = 0.5
#: Breaker states that let iterations through. None: no transition reported yet (closed).
_PASSING_BREAKER = frozenset({None, "closed", "disabled"})


def services_node(tree: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``services`` supervisor's node in a :meth:`Control.status` tree, if any."""
    for child in tree.get("children", ()):
        if child.get("name") == SERVICES:
            return child  # type: ignore[no-any-return]
    return None


def readiness_problems(tree: Mapping[str, Any]) -> list[dict[str, str]]:
    """Why the process is not ready (empty: ready): every service running, breaker closed."""
    node = services_node(tree)
    if node is None:
        return [{"service": SERVICES, "reason": "the services supervisor is not configured"}]
    if node.get("state") != "running" or not node.get("alive", True) or "error" in node:
        why = node.get("error") or f"the services supervisor is {node.get('state')}"
        return [{"service": SERVICES, "reason": str(why)}]
    problems: list[dict[str, str]] = []
    for child in node.get("children", ()):
        name = str(child.get("name"))
        state = child.get("state")
        breaker = child.get("breaker_state")
        if state == "paused":
            who = " and ".join(child.get("paused_by") or ["operator"])
            problems.append({"service": name, "reason": f"paused by {who}"})
        elif state != "running":
            exit_reason = child.get("last_exit")
            problems.append(
                {
                    "service": name,
                    "reason": f"{state}" + (f" (last exit: {exit_reason})" if exit_reason else ""),
                }
            )
        elif not child.get("alive", True):
            problems.append({"service": name, "reason": "its actor is not alive"})
        if state in ("running", "paused") and breaker not in _PASSING_BREAKER:
            problems.append({"service": name, "reason": f"circuit breaker {breaker}"})
    return problems


def service_health(
    node: Mapping[str, Any], metrics: Mapping[str, Any] | None, metrics_error: str | None = None
) -> dict[str, Any]:
    """One service's health: its supervisor ``node`` plus its own ``metrics`` (None if unread).

    ``status`` is ``stopped`` (stopped or failed for good), ``restarting``
    (waiting for its backoff), ``paused`` (by an operator), ``degraded``
    (held or open breaker, or more than half of its recent iterations
    failed), else ``healthy``; ``reasons`` says why it is not healthy.
    """
    state = node.get("state")
    reasons: list[str] = []
    m = metrics or {}
    breaker = m.get("circuit_breaker_state", node.get("breaker_state"))
    rate = m.get("recent_error_rate")
    recent = m.get("recent_iterations") or 0
    if state in ("stopped", "failed"):
        status = STOPPED
        reasons.append(f"{state}" + (f": {node['last_exit']}" if node.get("last_exit") else ""))
    elif state == "restarting":
        status = RESTARTING
        reasons.append(f"restarting (last exit: {node.get('last_exit')})")
    elif "operator" in (node.get("paused_by") or ()):
        status = PAUSED
        reasons.append("paused by an operator")
    else:
        if "breaker" in (node.get("paused_by") or ()):
            reasons.append("held by its supervisor while its breaker is open")
        if breaker not in _PASSING_BREAKER:
            reasons.append(f"circuit breaker {breaker}")
        if rate is not None and rate > DEGRADED_ERROR_RATE:
            reasons.append(f"{rate:.0%} of the last {recent} iterations failed")
        if not node.get("alive", True):
            reasons.append("its actor is not alive")
        status = DEGRADED if reasons else HEALTHY
    iterations = m.get("iteration_count")
    errors = m.get("error_count")
    recent_errors = m.get("recent_errors") or []
    return {
        "status": status,
        "reasons": reasons,
        "state": state,
        "generation": node.get("generation"),
        "paused_by": list(node.get("paused_by") or []),
        "restarts": node.get("restarts"),
        "uptime_seconds": node.get("uptime_seconds"),
        "iterations": iterations,
        "errors": errors,
        "error_rate": (errors / iterations) if iterations else None,
        "recent_iterations": recent,
        "recent_error_rate": rate,
        "last_error": recent_errors[-1] if recent_errors else None,
        "breaker_state": breaker,
        "breaker": m.get("circuit_breaker_stats"),
        "symbol_cache_age_seconds": m.get("symbol_cache_age_seconds"),
        "metrics_error": metrics_error,
    }


def overall_status(statuses: Iterable[str]) -> str:
    """``healthy`` when every service is; ``stopped`` when none runs; else ``degraded``."""
    found = list(statuses)
    if all(s == HEALTHY for s in found):
        return HEALTHY
    if all(s == STOPPED for s in found):
        return STOPPED
    return DEGRADED
