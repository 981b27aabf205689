"""Restart strategies: which children restart when one fails (Erlang/OTP's three).

A strategy is a small object with one question to answer; the supervisor
engine is the same loop whatever the answer. ``children`` is in start order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OneForOne:
    """Only the failed child: children independent of each other."""

    name: str = "one_for_one"

    def affected(self, children: Sequence[str], failed: str) -> list[str]:
        return [failed]


@dataclass(frozen=True, slots=True)
class OneForAll:
    """Every child: they share state and cannot run without each other."""

    name: str = "one_for_all"

    def affected(self, children: Sequence[str], failed: str) -> list[str]:
        return list(children)


@dataclass(frozen=True, slots=True)
class RestForOne:
    """The failed child and every child started after it: later ones depend on earlier."""

    name: str = "rest_for_one"

    def affected(self, children: Sequence[str], failed: str) -> list[str]:
        return list(children[children.index(failed) :])


Strategy = OneForOne | OneForAll | RestForOne

ONE_FOR_ONE = OneForOne()
ONE_FOR_ALL = OneForAll()
REST_FOR_ONE = RestForOne()

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)}


def strategy_named(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown supervisor strategy {name!r}; expected one of {', '.join(STRATEGIES)}"
        ) from None
