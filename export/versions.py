"""Publishing a version directory under ``<base>/<name>/`` safely against concurrent exports.

Every export of one model name holds an exclusive lock (``<base>/<name>/.export.lock``,
``fcntl.flock``, released by the kernel when the process dies) while it picks its version,
stages it in a hidden temporary directory and renames it into place. So two exports racing
into the same name end as two versions (or, for the same explicit version, one clean
failure), and any temporary directory found while holding the lock was left by a killed
export and is removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket
import tempfile
from typing import Iterator, Optional

logger = logging.getLogger("keras_vit.export")

LOCK_FILE = ".export.lock"
STAGING_PREFIX = ".tmp-"
RETIRED_PREFIX = ".old-"
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


class VersionExists(FileExistsError):
    """The version asked for is already there (and overwrite was not asked)."""


def check_name(name: str) -> str:
    """A model name is one path component that cannot climb or hide (no ``.``, ``..``)."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must start with a letter, digit or '_' and hold "
                         "only letters, digits, '_', '.' or '-'")
    return name


def check_version(version) -> Optional[int]:
    """None (the next free version) or a positive integer."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return version


def existing_versions(model_dir: str) -> list:
    return sorted(int(d) for d in os.listdir(model_dir)
                  if re.fullmatch(r"[1-9][0-9]*", d)) if os.path.isdir(model_dir) else []


class LockHeld(OSError):
    """Another live process holds the lock (``holder``: its pid and host, as it recorded them)."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def _holder(fd: int) -> str:
    """``pid N on host H`` as the holder wrote it into the lock file (unknown while it has
    not yet written it)."""
    try:
        pid, host = os.pread(fd, 4096, 0).decode("utf-8", "replace").split(maxsplit=1)
        return f"pid {int(pid)} on host {host.strip()}"
    except (OSError, ValueError):
        return "another process (pid not yet recorded)"


@contextlib.contextmanager
def locked(path: str, wait: bool = True) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The holder records its pid and host in the file. The kernel releases the lock when the
    holder's process ends, however it ends, so a lock left by a killed process never blocks
    (the file stays, with its last holder's line). ``wait=False``: raise :class:`LockHeld`
    naming the holder instead of waiting for it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockHeld(path, _holder(fd)) from None
            logger.info("waiting for %s holding %s", _holder(fd), path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_leftovers(model_dir: str) -> list:
    """Removes staging / retired directories of killed exports (call holding the lock)."""
    removed = []
    for entry in os.listdir(model_dir):
        if entry.startswith((STAGING_PREFIX, RETIRED_PREFIX)):
            shutil.rmtree(os.path.join(model_dir, entry), ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.warning("removed leftovers of interrupted exports in %s: %s", model_dir,
                       ", ".join(sorted(removed)))
    return removed


@contextlib.contextmanager
def claim_version(model_dir: str, version: Optional[int], overwrite: bool):
    """Holds the model's export lock and yields ``(version, staging_dir)``.

    The caller writes the version into ``staging_dir``; :func:`publish` then renames it into
    place. On any error the staging directory is removed and nothing else changes.
    """
    os.makedirs(model_dir, exist_ok=True)
    with locked(os.path.join(model_dir, LOCK_FILE)):
        remove_leftovers(model_dir)
        if version is None:
            version = max(existing_versions(model_dir), default=0) + 1
        final = os.path.join(model_dir, str(version))
        if os.path.lexists(final) and not overwrite:
            raise VersionExists(f"version {final} already exists; pass overwrite=True "
                                "(--overwrite) or another version")
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir)
        try:
            yield version, staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after publish


def publish(staging: str, final: str) -> None:
    """Renames the staged version into place (holding the lock of :func:`claim_version`).

    A new version appears at once. Replacing one (overwrite) is two renames: the old version
    moves aside and the new one takes its name, so the version is missing only for the
    instant between them, and the old one is restored if the second rename fails.
    """
    for root, dirs, files in os.walk(staging):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.chmod(staging, 0o755)  # mkdtemp makes 0700: a server running as another user
    if not os.path.lexists(final):
        os.rename(staging, final)
        return
    retired = tempfile.mkdtemp(prefix=RETIRED_PREFIX, dir=os.path.dirname(final))
    old = os.path.join(retired, "version")
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(old, final)
        os.rmdir(retired)
        raise
    shutil.rmtree(retired, ignore_errors=True)
