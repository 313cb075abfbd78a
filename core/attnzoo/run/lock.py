"""One writer per run: the run lock, a file created atomically in the run folder.

Whoever trains a run (``attnzoo train``, a study, one of a study's workers) first creates
``run.lock`` with O_CREAT | O_EXCL, which exactly one process can do, and removes it when the
run finishes, stops or fails. The lock says who holds it (host, pid, start time, scheduler job)
and carries a heartbeat the training loop refreshes, so a lock whose holder is gone is told
apart from one still at work:

- on the same host, the holder's pid is no longer alive;
- from another host (a shared filesystem), its heartbeat is older than ``stale_after`` seconds.

Such a lock is taken over, with a message. Any other lock is a refusal that names its holder.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path

from attnzoo.errors import AttnzooError
from attnzoo.run.rundir import check_can_hold_run

LOCK = "run.lock"
HEARTBEAT_SECONDS = 30.0  # how often a holder refreshes its heartbeat (at most; a check is one clock read)
# A lock from another host whose heartbeat is older than this is taken to be abandoned. Several
# heartbeats long, so a slow filesystem or a long validation does not look like a dead holder.
STALE_AFTER_SECONDS = float(os.environ.get("ATTNZOO_LOCK_STALE_SECONDS", 600))
JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


class RunLocked(AttnzooError):
    """The run is being trained by another process that is still alive."""


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "heartbeat": time.time(),
            "job": {k: os.environ[k] for k in JOB_VARIABLES if k in os.environ}, "token": uuid.uuid4().hex}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _read(path: Path) -> dict | None:
    """The lock's record; None when it is gone; {} when it is unreadable (being written, or damaged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stale_reason(holder: dict, stale_after: float = STALE_AFTER_SECONDS) -> str | None:
    """Why the holder of a lock is gone, or None while it may still be at work."""
    age = time.time() - float(holder.get("heartbeat") or 0)
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return f"its process {holder['pid']} on this host is gone"
        return None
    if age > stale_after:
        return f"its heartbeat is {age:.0f} s old (the limit is {stale_after:.0f} s)"
    return None


def describe_holder(holder: dict) -> str:
    job = holder.get("job") or {}
    jobs = ", ".join(f"{k}={v}" for k, v in job.items())
    age = time.time() - float(holder.get("heartbeat") or 0)
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('started')}"
            + (f" ({jobs})" if jobs else "") + f", last heartbeat {age:.0f} s ago")


class RunLock:
    """A held run lock: refresh it with `beat`, give it back with `release` (or use `with`)."""

    def __init__(self, path: Path, record: dict, created_dir: bool):
        self.path, self.record, self._created_dir = path, record, created_dir
        self._last_beat = time.monotonic()

    def beat(self, force: bool = False) -> None:
        """Refresh the heartbeat: every HEARTBEAT_SECONDS at most, unless `force` (a checkpoint)."""
        if not force and time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = time.monotonic()
        current = _read(self.path)
        if current is not None and current.get("token") != self.record["token"]:
            return  # taken over (we were judged gone): leave the new holder's lock alone
        self.record["heartbeat"] = time.time()
        tmp = self.path.with_name(f".{LOCK}.{self.record['token']}.tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Remove the lock if it is still ours; the run folder too if taking the lock created it and
        nothing else was written (a run that failed before it started leaves no empty folder)."""
        if (_read(self.path) or {}).get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        if self._created_dir:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass  # it holds the run: kept

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, record: dict) -> bool:
    """Create the lock file holding `record`, atomically; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
    return True


def _take_over(path: Path, stale: dict) -> None:
    """Move a stale lock aside, making sure it is the one judged stale (not a lock another process
    created a moment ago, which is put back)."""
    aside = path.with_name(f".{LOCK}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else moved it first
    moved = _read(aside) or {}
    if moved.get("token") != stale.get("token"):
        try:
            os.link(aside, path)  # put back a live lock, unless yet another one is there by now
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def try_acquire(run_dir: Path, stale_after: float = STALE_AFTER_SECONDS, say=print) -> RunLock | dict:
    """The lock of `run_dir` (a stale one taken over, said through `say`), or the record of the live
    process that holds it. Creates the run folder when there is none; a folder attnzoo did not
    create is refused before anything is written into it."""
    run_dir = Path(run_dir)
    check_can_hold_run(run_dir)
    created_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    for _ in range(20):  # each round is one atomic attempt; rounds repeat only while locks change hands
        record = _holder_record()
        if _create(path, record):
            return RunLock(path, record, created_dir)
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        if not holder:
            time.sleep(0.05)  # being written: read it again
            holder = _read(path)
            if holder is None:
                continue
        reason = stale_reason(holder or {}, stale_after)
        if reason is None:
            return holder
        say(f"{run_dir}: taking over the run lock of {describe_holder(holder)}: {reason}", flush=True)
        _take_over(path, holder)
    raise AttnzooError(f"could not take the run lock {str(path)!r}: it kept changing hands. Try again.")


def acquire(run_dir: Path, stale_after: float = STALE_AFTER_SECONDS, say=print) -> RunLock:
    """The lock of `run_dir`; a RunLocked error naming the holder when a live process has it."""
    got = try_acquire(run_dir, stale_after, say)
    if isinstance(got, RunLock):
        return got
    raise RunLocked(
        f"the run in {str(run_dir)!r} is being trained by {describe_holder(got)}; only one process may train a "
        f"run at a time. Wait for it to finish (or stop it), then run this again. If that process is gone, its "
        f"lock is taken over by itself: at once on the same host, after {STALE_AFTER_SECONDS:.0f} s without a "
        f"heartbeat from another host (ATTNZOO_LOCK_STALE_SECONDS sets the limit); or delete "
        f"{str(Path(run_dir) / LOCK)!r} once you are sure it is stopped.")
