"""Output files and folders: atomic writes, and which folders resgrad may write.

A crash never leaves half a result that looks whole; a failed write raises
``OutputError`` naming the path; :func:`prepare_output` refuses, before any work,
a path that holds something resgrad did not write.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.errors import OutputError, UsageError

# Temp files and folders, and a folder set aside while its replacement moves in, carry these
# prefixes, so that clean-up after a crash can never take a user's file for resgrad's.
TMP_PREFIX = ".resgrad-tmp-"
OLD_PREFIX = ".resgrad-old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
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


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a temp folder beside ``path``, then swap it in whole; on error nothing changes.

    An existing ``path`` is replaced (callers check first, with :func:`prepare_output`, that
    it holds only resgrad's files). Between the two renames a reader may see no folder at
    all, never a half-written one. An ``OSError`` becomes an ``OutputError`` naming the file
    as it would have been called in ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(path, exc) from exc
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f"{OLD_PREFIX}{os.getpid()}-{path.name}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # stopped between the two renames: the earlier folder goes back
        if isinstance(exc, OSError):
            raise OutputError(_final_name(exc, tmp, path), exc) from exc
        raise
    if old is not None:
        shutil.rmtree(old)


def _final_name(exc: OSError, tmp: Path, path: Path) -> Path:
    """The path that a failed write inside the temp folder ``tmp`` was meant to have in ``path``."""
    name = getattr(exc, "path", None) or exc.filename
    try:
        return path / Path(name).relative_to(tmp) if name else path
    except (TypeError, ValueError):
        return path


# ---------------------------------------------------------------- which folders resgrad may write

# A folder resgrad claims before it writes anything there (see mark_output): {"kind": ...}.
MARKER = ".resgrad.json"
# What resgrad writes into each kind of output folder, and the files that mark a folder as
# resgrad's. Run, report, lesion, shatter and landscape folders are replaced whole; sweep and bench folders are written
# into, and files of other names there are left alone.
OWN_NAMES = {
    "run": ("config.json", "metrics.csv", "grad_norms.parquet", "model.pt", "summary.json", MARKER),
    "sweep": ("sweep.json", "summary.csv", "runs", "report", ".lock", MARKER),
    "report": ("report.md", "report.html", "figures", "tables", MARKER),
    "bench": ("bench.csv", "bench.md", "bench.png", "speedup.csv", "bench.partial.csv", MARKER),
    "lesion": ("lesion.csv", "lesion_single_block.png", "lesion_n_deleted.png", MARKER),
    "shatter": ("shatter.csv", "shatter_correlation_vs_distance.png", "shatter_correlation_vs_depth.png", MARKER),
    "landscape": (
        "landscape.csv",
        "curvature.csv",
        "landscape_2d.png",
        "landscape_1d.png",
        "landscape_init_final.png",
        MARKER,
    ),
}
SIGNATURES = {
    "sweep": ("sweep.json", ".lock"),
    "report": ("report.md",),
    "bench": ("bench.csv", "bench.partial.csv"),
    "run": ("summary.json", "config.json"),
    "lesion": ("lesion.csv",),
    "shatter": ("shatter.csv",),
    "landscape": ("landscape.csv",),
}
REPLACED_WHOLE = ("run", "report", "lesion", "shatter", "landscape")
# Files in a report's subfolders: its figures and tables.
_REPORT_SUFFIXES = {"figures": ".png", "tables": ".csv"}


def folder_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of output (run, sweep, report, bench) a folder holds, by its own files; None if none."""
    path = Path(path)
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind in OWN_NAMES:
        return kind
    for kind, names in SIGNATURES.items():
        if any((path / name).exists() for name in names):
            return kind
    return None


def mark_output(path: str | os.PathLike[str], kind: str) -> Path:
    """Check ``path`` (:func:`prepare_output`), make the folder and claim it for ``kind`` output.

    The marker lets a folder that resgrad made be recognised before its first result is in
    it (a bench stopped early, or a script that puts its log there first).
    """
    path = prepare_output(path, kind)
    if not (path / MARKER).exists():
        write_json(path / MARKER, {"kind": kind})
    return path


def _entries(path: Path) -> list[str]:
    """The names in ``path``, less resgrad's own temp names."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise UsageError(f"cannot read folder {path} ({exc.strerror}); give --out a folder you can use.") from None
    return sorted(n for n in names if not n.startswith((TMP_PREFIX, OLD_PREFIX)))


def _recorded(run_dir: Path) -> set[str]:
    """The file names a run's summary.json records as written with it."""
    try:
        files = json.loads((run_dir / "summary.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return set(files) if isinstance(files, dict) else set()


def _owned(path: Path, kind: str, name: str) -> bool:
    """Whether ``path / name`` is something resgrad writes into a ``kind`` folder."""
    if kind == "run" and name in _recorded(path):
        return True
    if name not in OWN_NAMES[kind]:
        return False
    suffix = _REPORT_SUFFIXES.get(name) if kind == "report" else None
    if suffix is None:
        return True
    sub = path / name
    return sub.is_dir() and all(p.is_file() and p.suffix == suffix for p in sub.iterdir())


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _probe(folder: Path) -> None:
    """Create and remove a temp file in ``folder``: a read-only or full filesystem answers here."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot write in {folder} ({reason}); give --out a folder you can write to.") from None


def prepare_output(path: str | os.PathLike[str], kind: str, force: bool = False) -> Path:
    """Check, before any work starts, that resgrad may write output of ``kind`` at ``path``.

    Allowed: an absent path, an empty folder, or a folder resgrad made for the same kind
    (recognised by its own files). An existing run folder is replaced only with ``force``,
    and a run or report folder that also holds files resgrad did not write never is. A path
    under a file, the current folder as a folder to replace, and a place that cannot be
    written are refused too. Nothing is created or changed.

    Args:
        path: the output folder.
        kind: ``run``, ``sweep``, ``report``, ``bench``, ``lesion``, ``shatter`` or ``landscape``.
        force: allow replacing an existing run folder.

    Raises:
        UsageError: one sentence naming the path and what to do.
    """
    path = Path(path)
    what = f"{kind} folder"
    where, cwd = path.resolve(), Path.cwd().resolve()
    if kind in REPLACED_WHOLE and (where == cwd or where in cwd.parents):
        raise UsageError(
            f"{path} is the current folder or holds it, and a {what} is replaced whole; "
            f"give --out a new folder, such as {path / kind}."
        )
    for parent in path.parents:  # nearest first
        if parent.exists():  # only the nearest existing one can be a file
            if not parent.is_dir():
                raise UsageError(
                    f"{parent} is a file, so {path} cannot be made inside it; give --out a path in a folder."
                )
            break
    if path.is_symlink() and kind in REPLACED_WHOLE:
        raise UsageError(f"{path} is a symbolic link, which a {what} would replace; give --out the folder itself.")
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{path} is a file, not a {what}; give --out a new or empty folder (the file is left as it is)."
        )
    existing = path.is_dir()
    entries = _entries(path) if existing else []
    if entries:
        found = folder_kind(path)
        if found is None:
            raise UsageError(
                f"{path} holds files resgrad did not write ({_some(entries)}); give --out a new or empty folder."
            )
        if found != kind:
            raise UsageError(f"{path} is a resgrad {found} folder, not a {what}; give --out another folder.")
        foreign = [n for n in entries if not _owned(path, kind, n)] if kind in REPLACED_WHOLE else []
        if foreign:
            raise UsageError(
                f"{path} also holds files resgrad did not write ({_some(foreign)}), which replacing "
                f"the {what} would delete; move them away or give --out another folder."
            )
        if kind == "run" and not force:
            raise UsageError(f"{path} already holds a run; add --force to replace it, or give --out another folder.")
    if existing:
        _probe(path)
    if not existing or kind in REPLACED_WHOLE:  # a new folder is made, or the folder swapped, in its parent
        _probe(next(p for p in (path.parent, *path.parent.parents, where.parent) if p.exists()))
    return path


# ---------------------------------------------------------------- is a folder whole?


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder: str | os.PathLike[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` for files in ``folder``: what :func:`check_record` checks."""
    folder = Path(folder)
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_of(folder / n)} for n in names}


def check_record(folder: str | os.PathLike[str], record: Any) -> str | None:
    """Why the files of ``folder`` differ from ``record`` (see :func:`file_record`); None when they match."""
    folder = Path(folder)
    if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
        return "its record of files is malformed"
    for name, want in record.items():
        path = folder / name
        try:
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != want.get("bytes"):
                return f"{name} has {size} bytes, {want.get('bytes')} recorded"
            if sha256_of(path) != want.get("sha256"):
                return f"{name} does not match its recorded SHA-256"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
    return None
