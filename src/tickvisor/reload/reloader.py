"""One reload: read the config file again, validate it, apply what changed to the tree.

A config is validated in full before anything is applied, by the same
loader as at start (``load_config`` with ``${VAR}`` interpolation, then the
alert channels from the environment), so a reload can never half-apply a
broken file: it is either :meth:`Reloader.reload_now` -> ``rejected`` with
the running config untouched, or a diff that is applied key by key.

The reloader talks to the tree only through :class:`Control`, whose every
call has a timeout, and publishes :class:`ConfigRejected` on the event bus
(a tell, never blocking). It keeps no lock: it is meant to be driven by one
thread at a time (the watcher's, or a test's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tickvisor.clock import Clock
from tickvisor.config import ConfigError, TickvisorConfig, load_config, with_alert_env
from tickvisor.logs import get_logger
from tickvisor.messages import ConfigRejected
from tickvisor.reload.diff import Change, diff_configs
from tickvisor.reload.plan import SERVICES, ReloadPlan, plan_reload
from tickvisor.supervision.control import Control

__all__ = ["ReloadResult", "Reloader", "load_like_start"]

log = get_logger("tickvisor.reload")

Loader = Callable[[Path], TickvisorConfig]


def load_like_start(path: Path) -> TickvisorConfig:
    """The config as ``tickvisor run`` loads it: the file, then alert channels from the env."""
    return with_alert_env(load_config(path))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload did; the ``config.reloaded`` / ``config.rejected`` line says the same."""

    status: Literal["reloaded", "unchanged", "rejected"]
    changed: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    #: Paths that should have been applied but could not be (tree busy, child gone): error.
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None


class Reloader:
    """Reloads ``path`` into the tree behind ``control``; ``current`` is the config in force.

    ``bus`` receives a :class:`ConfigRejected` for each new rejection (the
    alerts actor turns it into a warning alert); the same broken file saved
    again is logged again but not alerted twice.
    """

    def __init__(
        self,
        path: str | Path,
        control: Control,
        bus: Any,
        current: TickvisorConfig,
        clock: Clock,
        *,
        load: Loader = load_like_start,
    ) -> None:
        self.path = Path(path)
        self.control = control
        self.bus = bus
        self.current = current
        self.clock = clock
        self._load = load
        self._digests = _symbols_digests(current)
        self._last_rejection: str | None = None

    def watched_files(self) -> list[Path]:
        """The config file and every symbols file the config in force names."""
        files = [self.path]
        files.extend(_symbols_files(self.current).values())
        return files

    def reload_now(self) -> ReloadResult:
        """Load, validate, diff and apply; never raises for a bad file or a busy tree."""
        try:
            new = self._load(self.path)
        except ConfigError as exc:
            return self._reject(exc)
        digests = _symbols_digests(new)
        changes = diff_configs(self.current, new)
        symbols_changed = self._symbols_changed(new, digests)
        if not changes and not symbols_changed:
            if self._last_rejection is not None:
                log.info("config.reloaded", file=str(self.path), changed=[], recovered=True)
            else:
                log.debug("config.unchanged", file=str(self.path))
            self._last_rejection = None
            return ReloadResult("unchanged")
        self._last_rejection = None
        plan = plan_reload(self.current, new, changes, symbols_changed)
        return self._apply(new, digests, changes, symbols_changed, plan)

    # --- internals -----------------------------------------------------------------

    def _reject(self, exc: ConfigError) -> ReloadResult:
        error = str(exc)
        log.warning(
            "config.rejected",
            file=str(self.path),
            error=error,
            problems=len(exc.problems),
            keeping="the running config",
        )
        if error != self._last_rejection and self.bus is not None:
            self.bus.tell(ConfigRejected(str(self.path), error, self.clock.time()))
        self._last_rejection = error
        return ReloadResult("rejected", error=error)

    def _symbols_changed(self, new: TickvisorConfig, digests: dict[Path, str | None]) -> list[str]:
        """Services whose symbols file is the same path as before, with other contents."""
        before = _symbols_files(self.current)
        return [
            name
            for name, path in _symbols_files(new).items()
            if before.get(name) == path and self._digests.get(path) != digests.get(path)
        ]

    def _apply(
        self,
        new: TickvisorConfig,
        digests: dict[Path, str | None],
        changes: list[Change],
        symbols_changed: list[str],
        plan: ReloadPlan,
    ) -> ReloadResult:
        applied: list[str] = []
        restarted: list[str] = []
        failed: dict[str, str] = {}
        failed_services: set[str] = set()
        for update in plan.updates:
            try:
                self.control.reconfigure(
                    f"{SERVICES}/{update.name}", update.config, restart=update.restart
                )
            except Exception as exc:  # a busy or restarting tree: report, retry next time
                failed_services.add(update.name)
                failed.update(dict.fromkeys(update.paths, _error(exc)))
                continue
            (restarted if update.restart else applied).extend(update.paths)
        for name in plan.invalidate:
            key = f"{SERVICES}.{name}.symbols_file"
            try:
                self.control.invalidate_cache(f"{SERVICES}/{name}")
            except Exception as exc:
                failed_services.add(name)
                failed[key] = _error(exc)
                continue
            if key not in applied:
                applied.append(key)
        changed = [c.dotted for c in changes]
        changed += [
            key
            for key in (f"{SERVICES}.{name}.symbols_file" for name in symbols_changed)
            if key not in changed
        ]
        self._adopt(new, digests, failed_services)
        (log.warning if failed else log.info)(
            "config.reloaded",
            file=str(self.path),
            changed=changed,
            applied=applied,
            restarted=restarted,
            needs_restart=plan.needs_restart,
            failed=failed,
            changes={c.dotted: c.shown() for c in changes},
        )
        return ReloadResult(
            "reloaded",
            changed=changed,
            applied=applied,
            restarted=restarted,
            needs_restart=plan.needs_restart,
            failed=failed,
        )

    def _adopt(
        self, new: TickvisorConfig, digests: dict[Path, str | None], failed: set[str]
    ) -> None:
        """``new`` is in force now, except for services that could not take it.

        Their old sections (and symbols-file digests) are kept, so the next
        reload sees their changes again and retries them.
        """
        if failed:
            kept = {name: getattr(self.current.services, name) for name in failed}
            new = new.model_copy(update={"services": new.services.model_copy(update=kept)})
            for name, path in _symbols_files(new).items():
                if name in failed:
                    digests[path] = self._digests.get(path)
        self.current = new
        self._digests = digests


def _symbols_files(config: TickvisorConfig) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in type(config.services).model_fields:
        service = getattr(config.services, name)
        if service is not None and service.symbols_file is not None:
            found[name] = service.symbols_file
    return found


def _symbols_digests(config: TickvisorConfig) -> dict[Path, str | None]:
    return {path: _digest(path) for path in _symbols_files(config).values()}


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
