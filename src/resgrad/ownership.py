"""Which files in an output folder resgrad wrote, and which leftovers beside it are resgrad's own.

Every folder that resgrad replaces whole (a run, a report, a lesion, shatter or landscape
folder, a TensorBoard run, or any new experiment's folder) carries a manifest, ``.resgrad.json``:
its kind and every file resgrad wrote into it, with its size and SHA-256. A file or
folder the manifest does not list, at any depth, is someone else's: :func:`foreign`
finds it. Folders written before the manifest are judged by the names resgrad gave
them (:data:`OWN_NAMES`, a report's figures and tables as its ``report.md`` names them).

Temp files and folders, and a folder set aside while its replacement moves in, carry
resgrad's prefixes and the id of the process that made them
(``.resgrad-tmp-<pid>-<name>-<random>``, ``.resgrad-old-<pid>-<name>``), so that a
later run can tell what a killed run left (:func:`leftovers`) from a user's file and
from the temp files of a run still going on.

:func:`swap_in` and :func:`dispose` are the swap of a folder replaced whole, with its
last check; :func:`clean_leftovers` undoes what a killed run left. Imports neither torch
nor pandas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resgrad.errors import UsageError

log = logging.getLogger(__name__)

TMP_PREFIX = ".resgrad-tmp-"
OLD_PREFIX = ".resgrad-old-"
# A folder resgrad claims, and the manifest of a folder it replaces whole: {"kind": ..., "files": ...}.
MARKER = ".resgrad.json"
# What resgrad writes into each kind of output folder, by name; for folders replaced whole, the rule
# for folders made before the manifest. Sweep and bench folders are written into: files of other
# names there are left alone.
OWN_NAMES = {
    "run": ("config.json", "metrics.csv", "grad_norms.parquet", "model.pt", "summary.json", MARKER),
    "sweep": ("sweep.json", "summary.csv", "runs", "report", ".lock", MARKER),
    "report": ("report.md", "report.html", "figures", "tables", MARKER),
    "bench": ("bench.csv", "bench.md", "bench.png", "speedup.csv", "bench.partial.csv", MARKER),
    "lesion": ("lesion.csv", "lesion_single_block.png", "lesion_n_deleted.png", MARKER),
    "shatter": ("shatter.csv", "shatter_correlation_vs_distance.png", "shatter_correlation_vs_depth.png", MARKER),
    "tensorboard": ("resgrad-run.json", MARKER),  # and its event files (events.out.tfevents.*)
    "landscape": (
        "landscape.csv",
        "curvature.csv",
        "landscape_2d.png",
        "landscape_1d.png",
        "landscape_init_final.png",
        MARKER,
    ),
}
# The files that mark a folder as resgrad's, when it has no marker.
SIGNATURES = {
    "sweep": ("sweep.json", ".lock"),
    "report": ("report.md",),
    "bench": ("bench.csv", "bench.partial.csv"),
    "run": ("summary.json", "config.json"),
    "lesion": ("lesion.csv",),
    "shatter": ("shatter.csv",),
    "tensorboard": ("resgrad-run.json",),
    "landscape": ("landscape.csv",),
}
WRITTEN_INTO = ("sweep", "bench")  # every other kind is replaced whole
_EVENTS = re.compile(r"events\.out\.tfevents\..+")
_REPORT_FILES = re.compile(r"\b(figures/[^`)\s/]+\.png|tables/[^`)\s/]+\.csv)")


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


# ---------------------------------------------------------------- the manifest


def read_marker(folder: Path) -> dict[str, Any]:
    """A folder's ``.resgrad.json`` as a dict; empty when it is missing or unreadable."""
    try:
        found = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def manifest(folder: Path, kind: str) -> dict[str, Any]:
    """The manifest of a filled folder: its kind, every file in it (relative paths) and its subfolders."""
    files, folders = [], []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        folders += [(rel / d).as_posix() for d in dirs]
        files += [(rel / n).as_posix() for n in names if (rel / n).as_posix() != MARKER]
    return {"kind": kind, "files": file_record(folder, sorted(files)), "folders": sorted(folders)}


def _recorded(run_dir: Path) -> set[str]:
    """The file names a run's summary.json records as written with it (runs made before the manifest)."""
    try:
        files = json.loads((run_dir / "summary.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return set(files) if isinstance(files, dict) else set()


def _names_in(path: Path, pattern: re.Pattern[str]) -> set[str]:
    try:
        return set(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return set()


def own_files(folder: Path, kind: str) -> tuple[set[str], set[str]]:
    """The files and the subfolders (relative paths) of ``folder`` that resgrad wrote as a ``kind`` folder."""
    marker = read_marker(folder)
    if marker.get("kind") == kind and isinstance(marker.get("files"), dict):
        files = {str(f) for f in marker["files"]} | {MARKER}
        folders = {str(f) for f in marker.get("folders") or []}
        folders |= {p.as_posix() for f in files for p in Path(f).parents if p != Path(".")}
        return files, folders
    files = set(OWN_NAMES.get(kind, ())) - {"figures", "tables"}
    if kind == "run":
        files |= _recorded(folder)
    if kind == "report":  # the figures and tables its report.md names
        return files | _names_in(folder / "report.md", _REPORT_FILES), {"figures", "tables"}
    if kind == "tensorboard":
        try:
            files |= {n for n in os.listdir(folder) if _EVENTS.fullmatch(n)}
        except OSError:
            pass
    return files, set()


def foreign(folder: str | os.PathLike[str], kind: str) -> list[str]:
    """What in ``folder`` resgrad did not write as a ``kind`` folder, at any depth: relative paths, sorted.

    A subfolder resgrad did not make is named once, not file by file. Links and anything
    that is not a plain file or folder count as foreign (resgrad makes none).
    """
    folder = Path(folder)
    files, folders = own_files(folder, kind)
    found: list[str] = []

    def walk(rel: Path) -> None:
        with os.scandir(folder / rel) as entries:
            for entry in entries:
                name = (rel / entry.name).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    if name in folders:
                        walk(rel / entry.name)
                    else:
                        found.append(name + "/")
                elif not (entry.is_file(follow_symlinks=False) and name in files):
                    found.append(name)

    walk(Path("."))
    return sorted(found)


def folder_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of output (run, sweep, report, bench, ...) a folder holds, by its own files; None if none."""
    path = Path(path)
    kind = read_marker(path).get("kind")
    if isinstance(kind, str) and kind:
        return kind
    for kind, names in SIGNATURES.items():
        if any((path / name).exists() for name in names):
            return kind
    return None


# ---------------------------------------------------------------- what a killed run left


@dataclass(frozen=True)
class Leftover:
    """A temp file or folder (``tmp``) or a set-aside folder (``old``) that a process now gone left."""

    path: Path
    state: str  # tmp | old
    name: str  # the name of what it was to become, or was


_TMP = re.compile(rf"{re.escape(TMP_PREFIX)}(\d+)-(.+)-[A-Za-z0-9_]{{8}}")
_OLD = re.compile(rf"{re.escape(OLD_PREFIX)}(\d+)-(.+)")


def tmp_prefix(name: str) -> str:
    """The prefix of this process's temp names for ``name``: ``.resgrad-tmp-<pid>-<name>-``."""
    return f"{TMP_PREFIX}{os.getpid()}-{name}-"


def old_name(name: str) -> str:
    """The name of ``name`` set aside by this process while its replacement moves in."""
    return f"{OLD_PREFIX}{os.getpid()}-{name}"


def _gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (this process counts as running)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    except (OverflowError, ValueError):  # no process can have that id
        return True
    return False


def leftovers(folder: str | os.PathLike[str], name: str | None = None) -> list[Leftover]:
    """The temp and set-aside entries in ``folder`` (for ``name`` only, if given) whose process is gone.

    Only names that resgrad makes, with the id of a process no longer running, are listed:
    a user's file never matches, nor the temp files of a run still going on.
    """
    folder = Path(folder)
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        for pattern, state in ((_TMP, "tmp"), (_OLD, "old")):
            match = pattern.fullmatch(entry)
            if match and (name is None or match[2] == name) and _gone(int(match[1])):
                found.append(Leftover(folder / entry, state, match[2]))
    return found


def legacy_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Temp names in ``folder`` without a process id (resgrad made them so before it named the process).

    Whose they were cannot be told; only a sweep, which holds its folder's lock, removes them.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [Path(folder) / n for n in names if n.startswith(TMP_PREFIX) and not _TMP.fullmatch(n)]


# ---------------------------------------------------------------- swapping a folder in, and cleaning up


def swap_in(tmp: Path, path: Path, kind: str) -> Path | None:
    """Move ``tmp`` to ``path``; an earlier ``path`` is set aside (returned) after a last check of its files."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return None
    aside = path.with_name(old_name(path.name))
    os.replace(path, aside)
    try:
        if aside.is_symlink() or not aside.is_dir():
            raise UsageError(f"{path} changed while resgrad worked: it is no longer a folder; nothing was replaced.")
        clash = [a for a in foreign(aside, kind) if os.path.lexists(tmp / a.rstrip("/"))]
        if clash:
            raise UsageError(
                f"{path / clash[0]} was added while resgrad worked, and the new {kind} folder has a file of that "
                "name; nothing was replaced: move it away and run again."
            )
        os.replace(tmp, path)
    except BaseException:
        if not os.path.lexists(path):
            os.replace(aside, path)
        raise
    return aside


def dispose(aside: Path, path: Path, kind: str) -> None:
    """Delete resgrad's own files of the set-aside folder ``aside``; move anything else back into ``path``.

    Nothing is removed with its contents unseen: files go one by one, then the folders they
    leave empty. What is left (a file added after the last check) moves back too; what
    cannot (its name is taken in ``path``) stays in ``aside`` and is named in a warning.
    """
    files, folders = own_files(aside, kind)
    kept = [rel for rel in foreign(aside, kind) if _put_back(aside / rel.rstrip("/"), path / rel.rstrip("/"))]
    for rel in sorted(files):
        target = aside / rel
        # Through real folders only: a link put where resgrad made a folder leads to someone else's files.
        real = not any(p.is_symlink() for p in target.parents if p != aside and aside in p.parents)
        if real and (target.is_symlink() or target.is_file()):
            target.unlink()
    for rel in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        try:
            os.rmdir(aside / rel)
        except OSError:  # not empty: something was added after the check; moved back below
            pass
    late = [p for p in sorted(aside.rglob("*"), reverse=True) if not p.is_dir() or p.is_symlink()]
    for source in late:
        if _put_back(source, path / source.relative_to(aside)):
            kept.append(source.relative_to(aside).as_posix())
    for folder in sorted((p for p in aside.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            os.rmdir(folder)
        except OSError:
            pass
    if kept:
        log.warning(
            "kept %s in %s: added while resgrad worked, not written by resgrad",
            ", ".join(sorted(kept)),
            path,
        )
    try:
        os.rmdir(aside)
    except OSError:
        log.warning("%s holds files that could not move back into %s (their names are taken): look there", aside, path)


def _put_back(source: Path, target: Path) -> bool:
    """Move ``source`` to ``target`` unless ``target`` exists; whether it moved."""
    if os.path.lexists(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return True


def clean_leftovers(folder: str | os.PathLike[str], name: str | None = None) -> None:
    """Remove what a killed resgrad left in ``folder`` (for ``name`` only, if given); put set-aside folders back.

    Only resgrad's temp and set-aside names of processes now gone are touched
    (:func:`resgrad.ownership.leftovers`). A temp file or folder goes: it is half written.
    A folder set aside while its replacement moved in goes back when nothing took its
    place; else resgrad's own files in it go, and anything else in it moves back into the
    folder that replaced it. Clean-up that fails is left for the next run.
    """
    for left in leftovers(folder, name):
        try:
            if left.state == "tmp":
                if left.path.is_dir() and not left.path.is_symlink():
                    shutil.rmtree(left.path)
                else:
                    left.path.unlink()
                continue
            original = left.path.with_name(left.name)
            if not os.path.lexists(original):
                os.replace(left.path, original)  # killed between the two renames: the old folder was whole
            elif (kind := folder_kind(left.path)) is not None and left.path.is_dir() and not left.path.is_symlink():
                dispose(left.path, original, kind)
        except OSError as exc:
            log.debug("could not clean up %s (%s); the next run tries again", left.path, exc)
