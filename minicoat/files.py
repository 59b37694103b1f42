"""Files that are whole or absent: atomic writes, and the clean-up of what a kill leaves behind.

Every file minicoat writes (checkpoints, metrics, plots, downloads, extracted data) goes to a
hidden temporary file in the target's own directory, is flushed to disk, then renamed over the
target with ``os.replace`` (atomic within one filesystem). A crash or ``kill -9`` at any point
leaves either the old file or the new one, never half of one. What it can leave is the
temporary file: its name ``.<target>.<pid>.<random>.tmp`` records the writer's process id, so
``remove_stale_temporaries`` can tell a dead writer's leftovers from a live writer's work.
"""

import contextlib
import os
import re
import secrets

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def temporary_path(path):
    """A fresh hidden temporary name next to ``path``: ``dir/.<name>.<pid>.<random>.tmp``."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Write ``path`` atomically: ``with atomic_write(path) as f: f.write(...)``.

    The file object is a temporary file in the same directory; when the block ends without an
    exception it is flushed, ``fsync``-ed and renamed over ``path`` (and the directory entry
    synced); if the block raises (or the process is interrupted) the temporary file is removed
    and ``path`` is untouched. Permissions follow the umask, as for any new file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    tmp = temporary_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_directory(directory)


def write_text(path, text):
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def fsync_directory(directory):
    """Persist a rename in ``directory`` (POSIX); not possible (nor needed) everywhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or no way to tell: leave its files alone
    return True


def remove_stale_temporaries(directory, every=False):
    """Delete the temporary files that killed writers left in ``directory``.

    Only names of the form ``temporary_path`` makes are touched. By default a file is removed
    only if the process that wrote it no longer exists; ``every=True`` removes them all (for a
    caller that holds the directory's lock, so that no one else can be writing there).
    Returns the names removed.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and (every or not _alive(int(match.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return sorted(removed)
