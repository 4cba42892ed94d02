"""The local Ray a run starts is stopped with the run, however the run ends; what an earlier run left is stopped
by the next one.

Why: ``ray.init()`` on a machine with no cluster starts ``gcs_server``, ``raylet`` and a few Python services as
children of the driver, and ``raylet`` starts ``ray::DashboardAgent``, ``ray::RuntimeEnvAgent`` and the
workers. ``ray.shutdown()`` stops them; a driver killed with SIGKILL (or by the OOM killer) never calls it,
and the two agents, which ignore SIGTERM, stay (about 175 MB).

The contract:

- :func:`start_watchdog` (called before ``ray.init``) starts ``python -m tki_sdk.runtime.pipeline.ray_reaper``
  in a session of its own. Its stdin is a pipe whose write end only the driver holds, so it reads EOF when
  the driver closes it (:meth:`Watchdog.close`, after ``ray.shutdown()``) or dies in any way. It then kills
  (SIGKILL) every process of the run's Ray session, removes the run's record and exits. While it waits it
  notes, every :data:`POLL_S` seconds, the processes of the session, so those whose parent died first are
  still known; until the driver has recorded its session (``ray.init`` still running) it notes the driver's
  new children instead.
- The record, ``<cache>/ray-sessions/<driver pid>-<driver start>.json`` (``<cache>``: ``$TKI_CACHE_DIR``,
  else ``~/.cache/tki-sdk``), names the driver (pid and start time), the watchdog's pid and the session
  folder; :meth:`Watchdog.attach` writes the session folder once ``ray.init`` returned.
- :func:`sweep_stale` (called by every run before it starts Ray) stops the processes of every recorded session
  whose driver and watchdog are both gone (a watchdog killed too), and removes those records.
- The processes of a session (:func:`session_processes`): those whose command line names the session folder
  or which hold a file open under it (the agents rewrite their command line, but keep their logs open), and
  their descendants; never the calling process, nor the driver while it lives.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tki_sdk.common.extras import missing_extra
from tki_sdk.runtime.engine.engine_choice import cache_dir

__all__ = ["Watchdog", "start_watchdog", "sweep_stale", "session_processes", "kill_processes", "records_dir",
           "child_pids", "stop_session", "POLL_S"]

log = logging.getLogger(__name__)

#: Seconds between the watchdog's looks at the session's processes (and at the driver).
POLL_S = 0.5


def _psutil() -> Any:
    """``psutil`` (the ``distributed`` extra brings it; only a Ray run needs it)."""
    try:
        import psutil
    except ImportError as e:
        raise missing_extra("--engine ray needs psutil to stop its local Ray", "distributed") from e
    return psutil


def records_dir() -> Path:
    """``<cache>/ray-sessions``: one JSON record per run that started a local Ray."""
    return cache_dir() / "ray-sessions"


def _start_time(pid: int) -> float | None:
    try:
        return _psutil().Process(pid).create_time()
    except (_psutil().NoSuchProcess, _psutil().AccessDenied):
        return None


def _alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is the process that started at ``started`` (not a later one that reuses the pid)."""
    if not pid:
        return False
    t = _start_time(int(pid))
    if t is None:
        return False
    try:
        if _psutil().Process(int(pid)).status() == _psutil().STATUS_ZOMBIE:
            return False
    except _psutil().Error:
        return False
    return started is None or abs(t - float(started)) < 1.0


def session_processes(session_dir: str | None, known: dict[int, float] | None = None,
                      exclude: set[int] | None = None) -> dict[int, float]:
    """``{pid: start time}`` of the processes of the Ray session in ``session_dir`` (module docstring), plus
    those of ``known`` that still run as the same process, plus every descendant of all of them."""
    exclude = {os.getpid(), *(exclude or set())}
    found: dict[int, float] = {}
    for pid, started in (known or {}).items():
        if _alive(pid, started):
            found[pid] = started
    if session_dir:
        marker = str(session_dir)
        for p in _psutil().process_iter(["pid", "cmdline", "create_time"]):
            if p.info["pid"] in exclude:
                continue
            try:
                hit = any(marker in a for a in (p.info["cmdline"] or ()))
                if not hit:
                    hit = any(f.path.startswith(marker) for f in p.open_files())
            except (_psutil().NoSuchProcess, _psutil().AccessDenied, _psutil().ZombieProcess):
                continue
            if hit:
                found[p.info["pid"]] = p.info["create_time"]
    for pid in list(found):
        try:
            for c in _psutil().Process(pid).children(recursive=True):
                found.setdefault(c.pid, c.create_time())
        except _psutil().Error:
            continue
    for pid in exclude:
        found.pop(pid, None)
    return found


def kill_processes(procs: dict[int, float], timeout: float = 10.0) -> list[int]:
    """SIGKILL every process of ``procs`` that still runs as the same process; wait up to ``timeout`` s for
    them to go. Returns the pids still running after that (normally none)."""
    targets = []
    for pid, started in procs.items():
        if _alive(pid, started):
            try:
                p = _psutil().Process(pid)
                p.send_signal(signal.SIGKILL)
                targets.append(p)
            except _psutil().Error:
                continue
    _, alive = _psutil().wait_procs(targets, timeout=timeout)
    return [p.pid for p in alive if p.is_running() and p.status() != _psutil().STATUS_ZOMBIE]


def child_pids() -> set[int]:
    """The pids of this process's children."""
    return {c.pid for c in _psutil().Process().children()}


def _children(pid: int) -> dict[int, float]:
    try:
        return {c.pid: c.create_time() for c in _psutil().Process(pid).children()}
    except _psutil().Error:
        return {}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def stop_session(record: dict[str, Any], exclude: set[int] | None = None) -> list[int]:
    """Kill the processes of the session ``record`` names, in rounds until none is left (Ray may start a
    worker while its siblings die). Returns the pids still running (normally none)."""
    known = {int(k): float(v) for k, v in (record.get("processes") or {}).items()}
    left: list[int] = []
    for _ in range(5):
        procs = session_processes(record.get("session_dir"), known, exclude)
        if not procs:
            return []
        left = kill_processes(procs)
        known = {}
    return left


def sweep_stale() -> int:
    """Stop the Ray processes earlier runs left (driver and watchdog both gone) and remove their records.
    Returns the number of processes killed."""
    killed = 0
    for path in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []:
        rec = _read_record(path)
        if rec is None:
            continue
        if _alive(rec.get("driver_pid"), rec.get("driver_started")) or \
                _alive(rec.get("watchdog_pid"), rec.get("watchdog_started")):
            continue
        known = {int(k): float(v) for k, v in (rec.get("processes") or {}).items()}
        procs = session_processes(rec.get("session_dir"), known)
        if procs:
            log.warning("stopping %d Ray process(es) left by an earlier run (driver pid %s, session %s)",
                        len(procs), rec.get("driver_pid"), rec.get("session_dir"))
            killed += len(procs)
            stop_session(rec)
        path.unlink(missing_ok=True)
    return killed


@dataclass
class Watchdog:
    """The driver's handle on its watchdog process (see the module docstring)."""

    proc: subprocess.Popen
    record: Path

    def attach(self, session_dir: str | None, head_pids: list[int]) -> None:
        """Record the session folder of the Ray just started, and its head processes."""
        rec = _read_record(self.record) or {}
        rec["session_dir"] = session_dir
        rec["processes"] = {str(p): t for p in head_pids if (t := _start_time(p)) is not None}
        _write_record(self.record, rec)

    def close(self, timeout: float = 30.0) -> None:
        """Tell the watchdog the run is over (after ``ray.shutdown()``): it stops what is left and exits."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the Ray watchdog (pid %d) did not finish within %.0f s", self.proc.pid, timeout)


def start_watchdog() -> Watchdog:
    """Start the watchdog of this process's local Ray (module docstring)."""
    me = os.getpid()
    started = _start_time(me)
    record = records_dir() / f"{me}-{int((started or 0) * 1000)}.json"
    _write_record(record, {"driver_pid": me, "driver_started": started, "session_dir": None, "processes": {},
                           "children_before": sorted(child_pids())})
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, str(record)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    rec = _read_record(record) or {}
    rec.update(watchdog_pid=proc.pid, watchdog_started=_start_time(proc.pid))
    _write_record(record, rec)
    return Watchdog(proc, record)


def _watch(record: Path) -> int:
    """The watchdog's body: wait for EOF on stdin, noting the session's processes, then stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver
    rec = _read_record(record) or {}
    driver = int(rec.get("driver_pid") or os.getppid())
    known: dict[int, float] = {}
    before = {int(p) for p in rec.get("children_before") or ()}  # what it starts until attach() is Ray's
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 4096):
            break
        if not rec.get("session_dir"):
            rec = _read_record(record) or rec
        if not rec.get("session_dir"):
            known.update({p: t for p, t in _children(driver).items() if p not in before and p != os.getpid()})
        head = {int(k): float(v) for k, v in (rec.get("processes") or {}).items()}
        known = session_processes(None, {**known, **head}, exclude={driver})  # cheap: the known and their children
    rec = _read_record(record) or rec
    rec["processes"] = {**{str(k): v for k, v in known.items()}, **(rec.get("processes") or {})}
    left = stop_session(rec, exclude={driver} if _alive(driver, rec.get("driver_started")) else None)
    if not left:
        record.unlink(missing_ok=True)
    return 0 if not left else 1


if __name__ == "__main__":  # the watchdog process
    sys.exit(_watch(Path(sys.argv[1])))
