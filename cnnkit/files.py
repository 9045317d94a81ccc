"""Files the user keeps are replaced atomically: written to a temporary file beside the
target, flushed to disk, then renamed over it in one step, so a reader (or a crash) sees
the old file or the new one, never half of one."""

from __future__ import annotations

import glob
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """An open temporary file that replaces ``path`` when the with-block ends without an
    error (fsync of the file, rename, fsync of the folder); on any error, even Ctrl-C,
    the temporary file is removed and ``path`` is untouched. The new file's mode follows
    the umask like any other file the user writes (mkstemp would make it owner-only)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:   # name the file the user asked for, not the temporary one
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # the rename itself lives in the directory entry; without this a power cut can undo it
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace path with data, atomically."""
    with atomic_file(path) as f:
        f.write(data)


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files atomic_file left beside path when a process was killed
    mid-write (``.<name>.*.tmp``); returns their paths. Call it at start, before anything
    writes path: a temporary file of a write in progress would be deleted too."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    removed = []
    for stale in glob.glob(os.path.join(glob.escape(directory), "." + glob.escape(os.path.basename(path)) + ".*.tmp")):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            continue
        removed.append(stale)
    return removed
