"""Output files and folders: atomic writes, and which folders resgrad may write.

A crash never leaves half a result that looks whole; a failed write raises
``OutputError`` naming the path; :func:`prepare_output` refuses, before any work,
a path that holds something resgrad did not write; :func:`atomic_dir` checks again at
the moment it swaps a folder in, and never deletes a file resgrad did not write
(which files those are: :mod:`resgrad.ownership`).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.errors import OutputError, UsageError
from resgrad.ownership import (
    MARKER,
    OLD_PREFIX,
    TMP_PREFIX,
    WRITTEN_INTO,
    clean_leftovers,
    dispose,
    folder_kind,
    foreign,
    manifest,
    swap_in,
    tmp_prefix,
)

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(path, exc) from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(path, exc) from exc
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then move the temp file over ``path`` in one step."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        write(tmp)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Strict JSON: NaN and inf become null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return write_text(path, text + "\n")


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: frame.to_parquet(p, index=False))


def write_files(
    folder: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], None]], remove: Sequence[str] = ()
) -> list[Path]:
    """Write a set of files into ``folder`` as a whole: all of them, or none.

    Each ``writers[name](tmp_path)`` writes to a temp name first; only when every file is
    written are they renamed into place, one rename each, and the files named in
    ``remove`` (an earlier set's that this one lacks) deleted. A failed write (a full
    disk) removes the temp files and leaves the folder as it was.
    """
    folder = Path(folder)
    temps: dict[str, Path] = {}
    name = ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in writers.items():
            clean_leftovers(folder, name)
            fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(name), dir=folder)
            os.close(fd)
            temps[name] = Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            write(Path(tmp))
    except BaseException as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(folder / name, exc) from exc
        raise
    try:
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
        for name in remove:
            if name not in temps:
                (folder / name).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(folder / name, exc) from exc
    return [folder / name for name in temps]


# ---------------------------------------------------------------- a folder swapped in whole


@contextmanager
def atomic_dir(path: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Fill a temp folder beside ``path``, then swap it in whole; on error nothing changes.

    The filled folder gets its manifest (``.resgrad.json``: ``kind`` and every file, see
    :mod:`resgrad.ownership`), so a later run knows which files are resgrad's. An existing
    ``path`` (checked first by :func:`prepare_output`) is set aside and checked again at the
    swap: a file added to it meanwhile moves into the new folder, or, where the new folder
    has a file of that name, nothing is replaced (``UsageError``). Then only resgrad's own
    files of the old folder are deleted, one by one. A reader may see no folder between
    the two renames, never a half-written one. Leftovers of a killed run into ``path`` are
    cleaned up first. An ``OSError`` becomes an ``OutputError`` naming the file as it would
    have been called in ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path.name), dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(path, exc) from exc
    try:
        yield tmp
        # Inside the temp folder no write needs to be atomic: the folder moves in whole.
        (tmp / MARKER).write_text(json.dumps(manifest(tmp, kind), indent=1) + "\n", encoding="utf-8")
        aside = swap_in(tmp, path, kind)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(_final_name(exc, tmp, path), exc) from exc
        raise
    if aside is not None:
        try:
            dispose(aside, path, kind)
        except OSError as exc:  # the new folder is in place; the next run into path finishes the clean-up
            log.warning("could not remove the earlier %s folder set aside as %s (%s)", kind, aside, exc)


def _final_name(exc: OSError, tmp: Path, path: Path) -> Path:
    """The path that a failed write inside the temp folder ``tmp`` was meant to have in ``path``."""
    name = getattr(exc, "path", None) or exc.filename
    try:
        return path / Path(name).relative_to(tmp) if name else path
    except (TypeError, ValueError):
        return path


# ---------------------------------------------------------------- which folders resgrad may write


def mark_output(path: str | os.PathLike[str], kind: str) -> Path:
    """Check ``path`` (:func:`prepare_output`), make the folder and claim it for ``kind`` output.

    The marker lets a folder that resgrad made be recognised before its first result is in
    it (a bench stopped early, or a script that puts its log there first).
    """
    path = prepare_output(path, kind)
    if not (path / MARKER).exists():
        write_json(path / MARKER, {"kind": kind})
    return path


def _entries(path: Path, flag: str) -> list[str]:
    """The names in ``path``, less resgrad's own temp names."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise UsageError(f"cannot read folder {path} ({exc.strerror}); give {flag} a folder you can use.") from None
    return sorted(n for n in names if not n.startswith((TMP_PREFIX, OLD_PREFIX)))


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _probe(folder: Path, flag: str) -> None:
    """Create and remove a temp file in ``folder``: a read-only or full filesystem answers here."""
    try:
        fd, name = tempfile.mkstemp(prefix=tmp_prefix("probe"), dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot write in {folder} ({reason}); give {flag} a folder you can write to.") from None


def check_writable(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Refuse a folder that cannot be written (read-only, no permission), or while absent, the folder it goes in."""
    path = Path(path)
    _probe(next((p for p in (path, *path.parents) if p.is_dir()), Path(".")), flag)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_path(path: str | os.PathLike[str], flag: str = "--out", replaced: bool = True) -> Path:
    """Refuse an output path that cannot be reached or named: a link loop, a name too long, a path under a file.

    ``replaced``: the folder is swapped in whole, so its name must leave room for resgrad's
    temp name beside it. Raises ``UsageError``; changes nothing.
    """
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link to nothing; give {flag} a folder.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link loop; give {flag} a real folder.") from None
        if exc.errno == errno.ENOTDIR:
            parent = next((p for p in path.parents if os.path.lexists(p) and not os.path.isdir(p)), path.parent)
            raise UsageError(
                f"{parent} is a file, so {path} cannot be made inside it; give {flag} a path in a folder."
            ) from None
        if exc.errno != errno.ENAMETOOLONG:
            raise UsageError(f"{path} cannot be reached ({exc.strerror or exc}); give {flag} another folder.") from None
    base = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), Path("."))
    limit = _name_max(base)
    if any(len(os.fsencode(part)) > limit for part in path.parent.parts):
        raise UsageError(f"a folder name in {path} is longer than {limit} bytes; give {flag} shorter names.")
    size = len(os.fsencode(path.name))
    room = limit - (len(os.fsencode(tmp_prefix(""))) + 8 if replaced else 0)  # the temp name beside it is longer
    if size > room:
        raise UsageError(
            f"the name {path.name[:24]}... is too long ({size} bytes; at most {room} here); give {flag} a shorter name."
        )
    return path


def prepare_output(path: str | os.PathLike[str], kind: str, force: bool = False, flag: str = "--out") -> Path:
    """Check, before any work starts, that resgrad may write output of ``kind`` at ``path``.

    Allowed: an absent path, an empty folder, or a folder resgrad made for the same kind
    (recognised by its own files). An existing run folder is replaced only with ``force``,
    and a folder replaced whole that also holds anything resgrad did not write, at any
    depth, never is. A path under a file, a link loop, a name too long, the current folder
    as a folder to replace, and a place that cannot be written are refused too. Nothing is
    created or changed.

    Args:
        path: the output folder.
        kind: ``run``, ``sweep``, ``report``, ``bench``, ``lesion``, ``shatter``, ``tensorboard``,
            or a new experiment's kind (replaced whole, like every kind but sweep and bench).
        force: allow replacing an existing run folder.
        flag: the option that named ``path``, for the messages.

    Raises:
        UsageError: one sentence naming the path and what to do.
    """
    replaced = kind not in WRITTEN_INTO
    path = check_path(path, flag, replaced)
    what = f"{kind} folder"
    where, cwd = path.resolve(), Path.cwd().resolve()
    if replaced and (where == cwd or where in cwd.parents):
        raise UsageError(
            f"{path} is the current folder or holds it, and a {what} is replaced whole; "
            f"give {flag} a new folder, such as {path / kind}."
        )
    if path.is_symlink() and replaced:
        raise UsageError(f"{path} is a symbolic link, which a {what} would replace; give {flag} the folder itself.")
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{path} is a file, not a {what}; give {flag} a new or empty folder (the file is left as it is)."
        )
    existing = path.is_dir()
    entries = _entries(path, flag) if existing else []
    if entries:
        found = folder_kind(path)
        if found is None:
            raise UsageError(
                f"{path} holds files resgrad did not write ({_some(entries)}); give {flag} a new or empty folder."
            )
        if found != kind:
            raise UsageError(f"{path} is a resgrad {found} folder, not a {what}; give {flag} another folder.")
        others = foreign(path, kind) if replaced else []
        if others:
            raise UsageError(
                f"{path} also holds files resgrad did not write ({_some(others)}), which replacing "
                f"the {what} would delete; move them away or give {flag} another folder."
            )
        if kind == "run" and not force:
            raise UsageError(f"{path} already holds a run; add --force to replace it, or give {flag} another folder.")
    if existing:
        _probe(path, flag)
    if not existing or replaced:  # a new folder is made, or the folder swapped, in its parent
        _probe(next(p for p in (path.parent, *path.parent.parents, where.parent) if p.exists()), flag)
    return path
