"""Hot config reload: watch the config and symbols files, validate, apply what is safe.

``tickvisor run`` calls :func:`watch_config` once the tree is up and
:meth:`ConfigWatcher.stop` before it stops the tree. A saved file is loaded
as at start; an invalid one is rejected (``config.rejected``, a warning
alert) and the running config stays; a valid one is diffed against the
running config and applied where that is safe (``config.reloaded`` with
``changed``, ``applied``, ``restarted`` and ``needs_restart``).
:mod:`~tickvisor.reload.plan` says what is applied how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pykka

from tickvisor.clock import Clock
from tickvisor.config import TickvisorConfig
from tickvisor.reload.diff import Change, diff_configs
from tickvisor.reload.plan import ReloadPlan, ServiceUpdate, plan_reload
from tickvisor.reload.reloader import Loader, Reloader, ReloadResult, load_like_start
from tickvisor.reload.watcher import ConfigWatcher
from tickvisor.supervision.control import Control

__all__ = [
    "Change",
    "ConfigWatcher",
    "ReloadPlan",
    "ReloadResult",
    "Reloader",
    "ServiceUpdate",
    "diff_configs",
    "load_like_start",
    "plan_reload",
    "watch_config",
]

#: Bound on each call a reload makes into the tree.
CONTROL_TIMEOUT = 10.0


def watch_config(
    path: str | Path,
    control: Control | pykka.ActorRef[Any],
    bus: Any,
    current_config: TickvisorConfig,
    clock: Clock,
    *,
    debounce_seconds: float = 0.3,
    polling: bool = False,
    poll_interval: float = 1.0,
    load: Loader = load_like_start,
) -> ConfigWatcher:
    """Start watching ``path`` for the tree behind ``control`` (or its root's ref).

    ``bus`` is the tree's :class:`~tickvisor.eventbus.EventBus` (a rejected
    reload is published there for the alerts actor); ``current_config`` is
    the config the tree runs, as ``run`` loaded it. Returns the started
    watcher; call :meth:`ConfigWatcher.stop` before stopping the tree.
    """
    if not isinstance(control, Control):
        control = Control(control, timeout=CONTROL_TIMEOUT)
    reloader = Reloader(path, control, bus, current_config, clock, load=load)
    watcher = ConfigWatcher(
        reloader,
        debounce_seconds=debounce_seconds,
        polling=polling,
        poll_interval=poll_interval,
    )
    return watcher.start()
