"""Checks of the files a command is about to write, made before it writes anything.

Each check raises ValueError with a message that starts with the argument as the user typed it
(``-o run.db: …``), so that the command line can report it in one line.
"""
from __future__ import annotations

import os
from typing import Iterable

__all__ = ["is_sqlite_file", "same_file", "check_output_file"]

_SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file that starts with SQLite's header (a results database, or
    any other SQLite database)."""
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


def check_output_file(path: str | os.PathLike, flag: str,
                      inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> None:
    """Refuse to write the file ``path`` (given as ``flag``, e.g. ``-o``) over an input of the
    same command (``inputs``: (argument, path) pairs) or over any SQLite database: CSV, JSON or
    PNG written there would destroy every result it holds."""
    path = os.fspath(path)
    for name, src in inputs:
        if same_file(path, src):
            raise ValueError(f"{flag} {path}: this is the input database {name} ({os.fspath(src)}) itself; "
                             "refusing to overwrite it (give another output file)")
    if os.path.isfile(path) and is_sqlite_file(path):
        raise ValueError(f"{flag} {path}: this is an SQLite database; refusing to overwrite it "
                         "(give another output file, or remove it first)")
