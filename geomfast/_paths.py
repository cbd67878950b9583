"""Checks of the files a command is about to write, made before it writes anything, and the
one writer of every output file (plots, exports, JSON reports): all of it on the disk, or an
OSError and the previous file untouched.

Each check raises ValueError with a message that starts with the argument as the user typed it
(``-o run.db: …``), so that the command line can report it in one line.
"""
from __future__ import annotations

import os
import stat
import tempfile
from typing import Iterable

__all__ = ["is_sqlite_file", "same_file", "check_output_file", "check_output_database",
           "check_output_folder", "check_input_database", "write_file"]

_SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file that starts with SQLite's header (a results database, or
    any other SQLite database)."""
    if not os.path.isfile(path):  # a FIFO or /dev/stdout: reading it would wait for ever
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same path once symlinks are resolved, or,
    when both exist, the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _nearest_existing(path: str) -> str:
    """``path`` or its deepest ancestor that exists (what ``os.makedirs`` would create below)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_folder_writable(folder: str, flag: str, path: str) -> None:
    """The folder that will hold ``path`` exists or can be created, and files can be made in it.

    Beyond the permission bits (which root passes everywhere), a file or folder is made there
    and removed at once: /proc, a read-only mount or a full file system refuse it here, named,
    rather than half-way through the command as a bare ``[Errno 2] No such file or directory``."""
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise ValueError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in the folder {base} (permission denied)")
    folder = os.path.abspath(folder)
    try:
        if base != folder:  # the first folder os.makedirs would create
            missing = folder
            while os.path.dirname(missing) != base:
                missing = os.path.dirname(missing)
            try:
                os.mkdir(missing)
            except FileExistsError:  # made meanwhile
                return
            try:
                os.rmdir(missing)
            except OSError:  # another process writes in it already: it is usable
                pass
        else:
            fd, probe = tempfile.mkstemp(prefix=".geomfast-probe-", dir=base)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        what = f"cannot create the folder {missing}" if base != folder else f"cannot create files in the folder {base}"
        raise ValueError(f"{flag} {path}: {what} ({e.strerror or e})") from None


def check_output_file(path: str | os.PathLike, flag: str,
                      inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> None:
    """Refuse to write the file ``path`` (given as ``flag``, e.g. ``-o``) over an input of the
    same command (``inputs``: (argument, path) pairs) or over any SQLite database: CSV, JSON or
    PNG written there would destroy every result it holds. Also refuse a folder, and a path
    whose folder cannot be created or written."""
    path = os.fspath(path)
    for name, src in inputs:
        if same_file(path, src):
            raise ValueError(f"{flag} {path}: this is the input database {name} ({os.fspath(src)}) itself; "
                             "refusing to overwrite it (give another output file)")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: this is a folder, expected a file name")
    if is_sqlite_file(path):
        raise ValueError(f"{flag} {path}: this is an SQLite database; refusing to overwrite it "
                         "(give another output file, or remove it first)")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path}: the file is not writable (permission denied)")
    else:
        _check_folder_writable(os.path.dirname(os.path.abspath(path)), flag, path)


def check_output_database(path: str | os.PathLike, flag: str) -> None:
    """Refuse a results database that SQLite could not create or write: a folder, a file that is
    not an SQLite database, or a file or folder without write permission (SQLite's WAL mode
    creates ``-wal`` and ``-shm`` files beside the database, so its folder must be writable)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: this is a folder, expected a results database file")
    if os.path.exists(path):
        if os.path.getsize(path) > 0 and not is_sqlite_file(path):
            raise ValueError(f"{flag} {path}: this file is not an SQLite database; refusing to write "
                             "results into it (give a new file name, or an existing results database)")
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path}: the database is not writable (permission denied)")
        if os.path.exists(path + "-wal") and os.path.exists(path + "-shm"):
            return
    _check_folder_writable(os.path.dirname(os.path.abspath(path)), flag, path)


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse an output folder that cannot be created, or written when it exists (whether an
    existing folder or file may be used is the command's own rule)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: cannot create files in this folder (permission denied)")
    elif not os.path.exists(path):
        _check_folder_writable(os.path.dirname(os.path.abspath(path)), flag, path)


def check_input_database(path: str | os.PathLike, flag: str) -> None:
    """Refuse a folder given as a results database (SQLite says 'disk I/O error' on it); a
    missing file or a foreign one is ResultStore's to report."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: this is a folder, expected a results database file")


# ----------------------------------------------------------------------------- writing

def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path``: all of it, flushed to the disk, or an OSError (ENOSPC …).

    A regular file (or a new one) is written to a temporary file beside it that replaces it only
    once complete, so a failed write leaves the previous file as it was and no partial one; missing
    parent folders are made. A device or FIFO (``/dev/stdout``) is written in place. A symlink is
    followed."""
    shown = os.fspath(path)
    try:
        try:
            st = os.stat(shown)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            # a device, FIFO or pipe, as named: /dev/stdout's real path is /proc/<pid>/fd/pipe:[…],
            # which is no path at all
            _write_fd(os.open(shown, os.O_WRONLY), data, sync=False)
            return
        real = os.path.realpath(shown)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        _write_file(real, st, data)
    except OSError as e:
        if e.filename is None and e.errno is not None:  # os.write's errors name no file: name it
            raise OSError(e.errno, e.strerror, shown) from None
        raise


def _write_file(path: str, st: os.stat_result | None, data: bytes) -> None:
    """``data`` into the regular file ``path`` (``st``: its stat, None when it does not exist yet)."""
    folder = os.path.dirname(path)
    if not os.access(folder, os.W_OK | os.X_OK):  # an existing writable file, in a folder we cannot
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # add to: only in place (check_output_file)
        try:
            _write_fd(fd, data, sync=True)
        except OSError:
            try:  # no partial image left behind looking like a plot
                os.truncate(path, 0)
            except OSError:
                pass
            raise
        return
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600: give it the mode the file had, or a new file's (umask)
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        _write_fd(fd, data, sync=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself, on the disk
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _write_fd(fd: int, data: bytes, *, sync: bool) -> None:
    """Write all of ``data`` to the open descriptor ``fd`` and close it; OSError on any failure
    (also one reported only by fsync or close, as NFS and full disks may)."""
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    os.close(fd)
