"""Atomic file writes, and paths confined to one directory: nothing the user made is lost to a save."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from tokenlab.errors import TokenlabError


class NotARegularFileError(OSError):
    """The target of a save exists and is not a regular file (a directory, a device, a FIFO, a socket)."""


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` through a temp file in the same directory and a rename; returns the file written.

    An interrupted write leaves the previous file whole and no temp file behind. A symlink is followed,
    so its target is replaced and the link stays a link. A directory, device, FIFO or socket at the
    target raises NotARegularFileError instead of being replaced by a regular file. The file keeps its
    permissions when it exists and is 0644 otherwise (mkstemp alone would make it 0600).
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise NotARegularFileError(f"{os.fspath(path)} is {_kind(mode)}; give the path of a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, mode & 0o777 if mode is not None else 0o644)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


class OutsideDirectoryError(TokenlabError, ValueError):
    """A path that would leave the directory a served lab is confined to."""


def confined_path(name: str, root: str | os.PathLike[str] | None) -> Path:
    """The file `name` names; inside `root` only when a root is given (what a served lab may touch).

    With a root, `name` must be relative, without `~` or `..`, and must stay inside the root once
    symlinks are resolved; anything else raises OutsideDirectoryError naming the directory.
    """
    if root is None:
        return Path(name).expanduser()
    base = Path(root).resolve()
    where = f"this lab reads and writes files only inside {base}"
    relative = Path(name)
    if relative.is_absolute() or name.startswith("~"):
        raise OutsideDirectoryError(f"{name}: absolute paths are refused; {where} (give a relative path)")
    if ".." in relative.parts:
        raise OutsideDirectoryError(f"{name}: '..' is refused; {where}")
    resolved = (base / relative).resolve()
    if resolved != base and base not in resolved.parents:
        raise OutsideDirectoryError(f"{name}: it leads outside the directory through a link; {where}")
    return resolved
