"""One training per run directory: a lock file held by rank 0 while a training runs.

``run_dir/train.lock`` is created with ``O_CREAT | O_EXCL`` (of two starts, exactly one creates
it) and holds JSON ``{"pid", "host", "started", "argv", "run_id"}``. A second start is refused
with a :class:`~mtl_torchrec.core.errors.RunDirError` naming the holder and the lock file.

A lock is stale, and taken over with a warning, when its process is gone (same host, no such
process, or a zombie) or when it was taken by an earlier attempt of this same job: the same
torchelastic run id (``TORCHELASTIC_RUN_ID``; torchx sets it to the app id, which a scheduler
retry keeps), since torchrun and the scheduler start an attempt only after the previous one ended,
possibly on another host or in a fresh container. The take-over runs under an ``flock`` of the run
directory, so two starts cannot both take over the same stale lock. The lock is removed when the
training ends, also by an exception; a killed training leaves it behind for the next start to take
over. Any other lock of another host cannot be checked and is never taken over.

Example::

    with hold_run_dir(run_dir, ctx):     # every rank; rank 0 takes the lock
        ...                              # train, checkpoint, write metrics
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch.distributed as dist

from mtl_torchrec.core.errors import RunDirError
from mtl_torchrec.core.io import json_text
from mtl_torchrec.distributed.context import DistContext

LOCK_FILE = "train.lock"
# torchrun's run id when none is given (not unique to a job).
_NO_RUN_ID = ("", "none")

_log = logging.getLogger(__name__)


def _pid_running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it ended just now, or there is no /proc to tell a zombie by (not Linux)
        return not Path("/proc").is_dir()
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _run_id() -> Optional[str]:
    """This job's torchelastic run id (the same in every attempt of one job), None outside one."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return None if run_id in _NO_RUN_ID else run_id


class RunDirLock:
    """The lock file of one run directory, for one process (see module doc).

    Example::

        lock = RunDirLock(run_dir)
        taken_over = lock.acquire()   # RunDirError when another training holds it
        try:
            ...
        finally:
            lock.release()
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._content: Optional[bytes] = None

    def _create(self) -> None:
        """Creates the lock file with this process as holder; FileExistsError if there is one."""
        content = json_text({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "run_id": _run_id(),
        }, indent=None).encode("utf-8")
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, content)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink()  # never leave an empty lock behind
            raise
        os.close(fd)
        self._content = content

    def _read(self) -> Optional[bytes]:
        """The lock file's bytes, None when there is none."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot read the run directory's lock file: {e.strerror or e}") from None

    def _holder(self, raw: bytes) -> Dict[str, Any]:
        try:
            holder = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            holder = None
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(holder.get("host"), str):
            raise RunDirError(
                f"{self.run_dir}: another training may be using this run directory: its lock file {self.path} "
                "is empty or garbled (a start in progress, or one that crashed while taking the lock); "
                "if no training runs here, delete the lock file"
            )
        return holder

    def _held(self, holder: Dict[str, Any]) -> RunDirError:
        where = holder["host"] if holder["host"] == socket.gethostname() else f"{holder['host']}, another host"
        return RunDirError(
            f"{self.run_dir}: another training is using this run directory (pid {holder['pid']} on {where}, "
            f"started {holder.get('started', '?')}; lock file {self.path}). Wait for it to end or use another "
            "run_dir; if that training is gone, delete the lock file"
        )

    def _stale(self, holder: Dict[str, Any]) -> bool:
        this_process = holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        if _run_id() is not None and holder.get("run_id") == _run_id() and not this_process:
            return True  # an earlier attempt of this job, which has ended
        return holder["host"] == socket.gethostname() and not _pid_running(holder["pid"])

    def acquire(self) -> Optional[Dict[str, Any]]:
        """Takes the lock; returns the holder of a stale lock it took over (else None).

        Raises :class:`RunDirError` naming the holder when a running training (or one on another
        host, or a garbled lock file) holds it.
        """
        try:
            self._create()
            return None
        except FileExistsError:
            pass
        raw = self._read()
        if raw is None:  # released between our attempt and the read
            return self._create_or_refuse()
        holder = self._holder(raw)
        if not self._stale(holder):
            raise self._held(holder)
        guard = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            # Under the guard: another start may have taken this stale lock over meanwhile.
            now = self._read()
            if now is not None and now != raw:
                raise self._held(self._holder(now))
            if now is not None:
                self.path.unlink()
            self._create_or_refuse()
        finally:
            os.close(guard)  # releases the flock
        return holder

    def _create_or_refuse(self) -> None:
        try:
            self._create()
        except FileExistsError:
            raw = self._read()
            raise self._held(self._holder(raw or b"")) from None

    def release(self) -> None:
        """Removes the lock file if this process still holds it (never raises: it runs while an
        exception may be on its way out)."""
        try:
            if self._content is not None and self._read() == self._content:
                self.path.unlink(missing_ok=True)
        except (OSError, RunDirError) as e:
            _log.warning("%s: could not remove the lock file: %s", self.path, e)
        self._content = None


def _broadcast(value: Optional[str], ctx: DistContext) -> Optional[str]:
    if dist.is_initialized() and ctx.world_size > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


@contextmanager
def hold_run_dir(run_dir: Path, ctx: DistContext) -> Iterator[None]:
    """Holds ``run_dir``'s lock on rank 0 for the block; every rank calls it and every rank raises
    the same :class:`RunDirError` when another training holds the directory. Says so (a warning)
    when it takes over a stale lock."""
    lock = RunDirLock(run_dir)
    error: Optional[str] = None
    if ctx.is_main:
        try:
            stale = lock.acquire()
            if stale is not None:
                _log.warning("%s: took over the lock of a training that is no longer running (pid %s on %s, "
                             "started %s%s)", run_dir, stale["pid"], stale["host"], stale.get("started", "?"),
                             f", an earlier attempt of job {stale['run_id']}" if stale.get("run_id") else "")
        except RunDirError as e:
            error = str(e)
        except OSError as e:  # e.g. a read-only run directory
            error = f"{lock.path}: cannot create the run directory's lock file: {e.strerror or e}"
    error = _broadcast(error, ctx)
    if error is not None:
        raise RunDirError(error)
    try:
        yield
    finally:
        if ctx.is_main:
            lock.release()
