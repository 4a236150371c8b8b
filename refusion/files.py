"""Writing files so that an interruption leaves either the old state or the new one, never half.

Everything is first written beside its destination (same directory, so the same file system) under a
hidden temporary name, then moved into place with `os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) in one step."""
    path = Path(path)
    with staged_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; on success it replaces `path`, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; the result should look like any new file
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory to fill; on success it becomes `path` (replacing an old one), on an exception
    it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    os.chmod(temporary, 0o777 & ~_umask())
    try:
        yield temporary
        replace_directory(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def replace_directory(source: Path, destination: Path) -> None:
    """Move the directory `source` to `destination`; an existing one is moved aside first, then deleted."""
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
    os.replace(source, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def move_files_into(source: Path, destination: Path, last: tuple[str, ...] = ()) -> None:
    """Move every file of the directory `source` into the existing directory `destination`, one atomic
    replace each, the files named in `last` after all others (the ones that make it count as complete)."""
    destination.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in source.iterdir())
    for name in sorted(names, key=lambda n: n in last):
        target = destination / name
        if (source / name).is_dir():
            replace_directory(source / name, target)
        else:
            os.replace(source / name, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
