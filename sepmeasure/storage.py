"""Atomic file writes: a result is either complete on disk or absent, never half-written.

A write goes to a temporary file beside its target, named
``.<target name>.<pid>-<host>.<random>.tmp`` (so that anyone can tell which process writes it),
is flushed to disk (``fsync``), renamed onto the target, and the folder is flushed too, so that
the rename survives a power cut. A temporary file is removed by :func:`remove_dead_temporaries`
only when the process that writes it is dead.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "fsync_path", "temporary_owner",
           "remove_dead_temporaries", "host_name", "process_alive"]

_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]+)\.[^.]+\.tmp(\.[^.]*)?$")


def host_name() -> str:
    """This machine's name as it appears in temporary file names and lock files (letters, digits, ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp itself uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder to disk (``fsync``; a folder's entries, e.g. after a rename).

    Examples
    --------
    >>> import tempfile
    >>> fsync_path(tempfile.mkdtemp())
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it, rename it onto ``path`` and
    flush the folder; on error remove it.

    The temporary name ends with ``suffix`` (e.g. ``".npy"``), so writers that append an
    extension they do not see (``numpy.save``) write to the yielded path itself.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.npy"
    >>> with atomic_path(target, suffix=".npy") as tmp:
    ...     np.save(tmp, np.arange(3))
    >>> np.load(target, allow_pickle=False).tolist()
    [0, 1, 2]
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-{host_name()}.", suffix=".tmp" + suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        fsync_path(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    fsync_path(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def temporary_owner(path: str | os.PathLike) -> tuple[int, str] | None:
    """``(pid, host)`` of the process writing the temporary file ``path``, or None when its name
    records no writer (not written by :func:`atomic_path`, or by an older version of it).

    Examples
    --------
    >>> temporary_owner(".results.csv.4242-node-1.x8k2p_.tmp")
    (4242, 'node-1')
    >>> temporary_owner(".results.csv.x8k2p_.tmp") is None
    True
    """
    m = _TEMPORARY.match(Path(path).name)
    return (int(m.group("pid")), m.group("host")) if m else None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a zombie counts as dead).

    Examples
    --------
    >>> process_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def remove_dead_temporaries(folder: str | os.PathLike, *, unowned: bool = False) -> int:
    """Remove the temporary files in ``folder`` whose writer is dead; return how many.

    A temporary file is removed when the process named in it (see :func:`temporary_owner`) ran on
    this machine and is no longer alive. Files of writers on other machines are left alone.
    ``unowned=True`` also removes temporary files that name no writer: only for folders that the
    caller alone writes (it holds their lock).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".t.csv.999999999-elsewhere.abc.tmp").write_text("")
    >>> remove_dead_temporaries(d)
    0
    """
    removed = 0
    here = host_name()
    root = Path(folder)
    if not root.is_dir():
        return 0
    for tmp in root.glob(".*.tmp*"):
        owner = temporary_owner(tmp)
        if owner is None:
            stale = unowned
        else:
            pid, host = owner
            stale = host == here and not process_alive(pid)
        if stale:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed
