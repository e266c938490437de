"""The advisory lock that one run (or ``clear-native verify``) holds on OUT."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from clear_native.io import BatchError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class OutLock:
    """An exclusive advisory lock on ``OUT/.lock`` (``fcntl.flock``, non-blocking)."""

    def __init__(self, out: Path, fd: int | None):
        self.out, self.fd = out, fd

    @classmethod
    def acquire(cls, out: Path) -> "OutLock":
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            finally:
                os.close(fd)
            raise BatchError(f"--out {str(out)!r} is in use by another run ({holder}); wait for it to end "
                             "or stop it, or use another --out") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # Some network file systems (Lustre without -o flock, ...) have no flock.
            logger.warning("cannot lock %s (%s): a second run on the same OUT would not be detected", out, e)
            return cls(out, fd)
        holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        try:
            if os.pread(fd, 200, 0) != holder:  # unchanged when it already names this process
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        except OSError:
            os.close(fd)  # releases the lock
            raise
        return cls(out, fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
