"""Files inside pool and run folders: opened only as regular files that stay inside the folder,
written crash-safe; and the JSON form of manifest rows. Shared by pools and run folders.

A folder the user names may itself be a symlink (the path is theirs); below it, nothing is
followed. `open_inside` walks from the folder with `O_NOFOLLOW` at every step and refuses a
symlink, FIFO, device, socket or folder where a file is expected; `check_regular` and
`check_folder` are the same rule for entries that are only looked at or deleted; `inside`
resolves a path read from a file in the folder and refuses one that leads out of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from deliberate.errors import DeliberateError

_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISREG, "a file"))  # fmt: skip
_MODES = {"rb": os.O_RDONLY, "r": os.O_RDONLY, "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
          "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT}  # fmt: skip


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def _refuse(path: str | Path, kind: str, want: str = "file") -> DeliberateError:
    return DeliberateError(
        f"{path} is {kind}, not a plain {want}: pool and run folders are read and written only "
        f"through their own regular files and folders; replace it with the real {want} or remove it"
    )


def _check(path: str | Path, is_kind, want: str) -> bool:
    """Whether `path` exists as `want` (by lstat: links are not followed); anything else is refused."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not is_kind(mode):
        raise _refuse(path, _kind(mode), want)
    return True


def check_regular(path: str | Path) -> bool:
    """Whether `path` is a regular file (False: nothing there); anything else is refused."""
    return _check(path, stat.S_ISREG, "file")


def check_folder(path: str | Path) -> bool:
    """Whether `path` is a real folder, not a symlink to one (False: nothing there)."""
    return _check(path, stat.S_ISDIR, "folder")


def check_tree(root: str | Path) -> None:
    """Refuse a folder holding, at any depth, anything but regular files and real folders."""
    for top, dirs, files in os.walk(root):  # never descends into a symlinked folder
        for name in [*dirs, *files]:
            entry = os.path.join(top, name)
            try:
                mode = os.lstat(entry).st_mode
            except FileNotFoundError:  # another rank's temp file, renamed meanwhile
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _refuse(entry, _kind(mode))


def inside(root: str | Path, rel: Any, what: str = "a path") -> Path:
    """`root / rel` for a relative path read from a file in `root`, resolved; refused if outside."""
    root = Path(root)
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise DeliberateError(f"{root}: {what} {rel!r} is not a relative path inside the folder")
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise DeliberateError(f"{root}: {what} {rel!r} leads outside the folder; it is damaged")
    return path


def open_fd_inside(root: str | Path, rel: str | Path, flags: int = os.O_RDONLY) -> int:
    """The fd of the regular file `root/rel` opened with `flags`, following no symlink below
    `root`: each step is looked at (lstat) before it is opened, so a FIFO or device is never
    opened at all. OSError passes through for what is not there or not permitted."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        raise DeliberateError(f"{root}: {str(rel)!r} is not a path inside the folder")
    at = os.open(root, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
    where = Path(root)
    try:
        for i, part in enumerate(parts):
            where, last = where / part, i == len(parts) - 1
            try:
                mode = os.stat(part, dir_fd=at, follow_symlinks=False).st_mode
            except FileNotFoundError:
                if not (last and flags & os.O_CREAT):
                    raise
                mode = stat.S_IFREG  # created here (O_NOFOLLOW refuses a symlink planted since)
            if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
                raise _refuse(where, _kind(mode), "file" if last else "folder")
            # O_NOFOLLOW and O_NONBLOCK: an entry swapped since the look is refused, never hangs.
            step = flags if last else os.O_RDONLY | os.O_DIRECTORY
            fd = os.open(part, step | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                         dir_fd=at)  # fmt: skip
            os.close(at)
            at = fd
        fd, at = at, -1
    finally:
        if at >= 0:
            os.close(at)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refuse(where, _kind(mode))
    os.set_blocking(fd, True)
    return fd


def open_inside(root: str | Path, rel: str | Path, mode: str = "rb") -> IO:
    """Open the regular file `root/rel` ('rb', 'r', 'ab', 'a'), never through a symlink."""
    return os.fdopen(open_fd_inside(root, rel, _MODES[mode]), mode)


def read_inside(root: str | Path, rel: str | Path, limit: int) -> bytes:
    """The bytes of the regular file `root/rel`, refused (one line) when over `limit` bytes."""
    with open_inside(root, rel) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DeliberateError(
            f"{Path(root) / rel} is over {limit:,} bytes, far more than deliberate writes there: "
            "it is damaged; restore it"
        )
    return data


@contextlib.contextmanager
def locked(root: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of the folder `root` (its `.lock` file, never a symlink)."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # a read-only folder has no writer to wait for
            fd = open_fd_inside(root, ".lock", os.O_RDWR | os.O_CREAT)
            stack.callback(os.close, fd)  # closing releases the lock, as does dying
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def _fsync_dir(path: Path) -> None:
    """Flush a directory so that a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at `path` only once it is completely written and synced.

    The rename replaces whatever name is at `path` and never writes through it; an existing
    symlink, FIFO or folder there is refused instead of replaced."""
    path = Path(path)
    check_regular(path)
    # Same directory so os.replace is a rename, never a copy; the pool cleans `.*.tmp` leftovers.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a stale one (or a planted symlink) is never written through
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, 0o644), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


# Why os.link can fail where a copy still works: another filesystem, a filesystem without hard
# links, fs.protected_hardlinks (a file of another user), the inode's link limit.
LINK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP,
               errno.EACCES)  # fmt: skip


def link_or_copy(src: Path, fd: int, dst: Path) -> bool:
    """Hard-link the file open as `fd` (found at `src`) to the new name `dst`: True. Where the
    filesystem refuses a link, copy it from `fd` instead (atomically): False. The link is
    checked to be `fd`'s inode, so a file swapped at `src` meanwhile is never linked."""
    st = os.fstat(fd)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in LINK_ERRORS:
            raise
        os.lseek(fd, 0, os.SEEK_SET)
        with atomic_file(dst) as f, os.fdopen(os.dup(fd), "rb") as g:
            shutil.copyfileobj(g, f, 2**22)
        return False
    got = os.lstat(dst)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
        dst.unlink()
        raise DeliberateError(f"{src} changed while it was being linked; re-run")
    return True


def _plain(value: Any) -> Any:
    """Turn NumPy scalars and arrays into plain Python so manifest rows round-trip exactly."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_dumps = functools.partial(json.dumps, default=_plain)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
