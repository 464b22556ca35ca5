"""Atomic file writes: outputs and checkpoints never exist half-written under their final name.

- :func:`atomic_path` writes one file under a temporary name beside it and renames it into place.
- :func:`atomic_paths` does the same for a *set* of files (a video, its storyboard, its timeline): they are
  replaced together or not at all.
- :func:`check_output_path` tells, before any work, whether an output can be written there at all.

Temporary names carry the writer's process id (``.video.mp4.1234-abcd.tmp.mp4``). A process killed mid-write
leaves them behind; the next write into the same folder removes those whose process is gone
(:func:`remove_stale_temporaries`), and finishes a set whose renames had begun.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_paths",
    "atomic_write_text",
    "check_output_path",
    "remove_stale_temporaries",
    "temporary_name_prefix",
]

# ".NAME.PID-RANDOM.tmp.SUFFIX" (files and folders, e.g. checkpoints) or ".NAME.PID-RANDOM.set" (a set of files
# being written together); RANDOM is what tempfile adds (8 characters).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}(?:\.tmp(?:\.[A-Za-z0-9]+)?|\.set)$")
# Temporary files of earlier versions (".STEM.RANDOM.tmp.SUFFIX", no process id): removed when this old.
_UNOWNED_TEMP_AGE_S = 3600.0
_COMMIT_FILE = "COMMIT"


def temporary_name_prefix(final: str | os.PathLike) -> str:
    """``.NAME.PID-`` : the prefix of every temporary name made for ``final`` by this process."""
    return f".{Path(final).name}.{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or a pid we cannot ask about): leave its files alone
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files and folders left in ``folder`` by writers that were killed; return what was removed.

    A set of files whose renames had begun (its commit record is written) is finished instead: its remaining new
    files are renamed into place, so the set is never left half old, half new.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        m = _TEMP_RE.match(entry.name)
        path = Path(entry.path)
        if m:
            if _process_alive(int(m.group("pid"))):
                continue
        elif not _is_unowned_temp(entry):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                if entry.name.endswith(".set"):
                    _finish_set(path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _is_unowned_temp(entry: os.DirEntry) -> bool:
    """A temporary file of an earlier FrameCap (``.STEM.RANDOM.tmp.SUFFIX``) untouched for an hour."""
    if not re.match(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]+)?$", entry.name):
        return False
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _UNOWNED_TEMP_AGE_S
    except OSError:
        return False


def _finish_set(staging: Path) -> None:
    """Roll an interrupted :func:`atomic_paths` forward if it had committed (every file complete), else nothing."""
    commit = staging / _COMMIT_FILE
    if not commit.is_file():
        return
    for name in commit.read_text(encoding="utf-8").splitlines():
        if name and (staging / name).exists():
            os.replace(staging / name, staging.parent / name)


def check_output_path(path: str | os.PathLike, what: str = "the output") -> Path:
    """Check, before any work, that ``path`` can be written: not a folder, its folder exists or can be made, and a
    file can be created there. Returns the path; raises :class:`OutputError` naming ``what`` (e.g. ``--out``).
    Nothing is created (a probe file is made and removed at once)."""
    final = Path(path).expanduser()
    try:
        if final.is_dir():
            raise OutputError(
                f"{what} {str(final)!r} is a folder; give a file name inside it, e.g. {str(final / ('out' + final.suffix))!r}."
                if final.suffix
                else f"{what} {str(final)!r} is a folder; give a file name inside it.",
                field=what,
            )
        ancestor = final.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(
                f"{what} {str(final)!r} cannot be written: {str(ancestor)!r} is a file, not a folder; choose another "
                f"path.",
                field=what,
            )
        fd, probe = tempfile.mkstemp(prefix=temporary_name_prefix(final), suffix=".tmp", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{what} {str(final)!r} cannot be written ({exc.strerror or exc}); choose a folder you can write to.",
            field=what,
        ) from None
    return final


def _os_error(final: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"Cannot write {str(final)!r} ({exc.strerror or exc}); check that its folder exists and is writable and that "
        f"the disk has room."
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    The temporary name keeps the suffix of ``path`` so writers that pick a format by extension
    (imageio, PIL) still work. An ``OSError`` (no such folder, read-only, disk full) becomes an
    :class:`OutputError` naming ``path``.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_name_prefix(final), suffix=f".tmp{final.suffix}",
                                        dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise _os_error(final, exc) from None
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            # mkstemp creates the file private (0600); give the result the permissions a plain open() would
            os.chmod(tmp, 0o666 & ~_current_umask())
            os.replace(tmp, final)
        except OSError as exc:
            raise _os_error(final, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for files that belong together (all in one folder); on success they replace ``paths``
    together, on error none does.

    The files are written into a hidden staging folder beside them. When every one is complete a commit record
    is written, then each is renamed into place; a process killed during those renames leaves the record, and the
    next write into the folder finishes them (:func:`remove_stale_temporaries`). So after any interruption the
    folder holds either every old file or every new one. Yields one temporary path per entry of ``paths``, with
    the same file names.
    """
    finals = [Path(p) for p in paths]
    if not finals:
        raise ValueError("atomic_paths needs at least one path")
    folder = finals[0].parent
    if any(p.parent != folder for p in finals) or len({p.name for p in finals}) != len(finals):
        raise ValueError(f"atomic_paths needs distinct names in one folder, got {[str(p) for p in finals]}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        staging = Path(tempfile.mkdtemp(prefix=temporary_name_prefix(finals[0]), suffix=".set", dir=folder))
    except OSError as exc:
        raise _os_error(finals[0], exc) from None
    committed = False
    try:
        yield [staging / p.name for p in finals]
        missing = [p.name for p in finals if not (staging / p.name).is_file()]
        if missing:
            raise ValueError(f"atomic_paths: {missing} were not written")
        for p in finals:
            os.chmod(staging / p.name, 0o666 & ~_current_umask())
        atomic_write_text(staging / _COMMIT_FILE, "".join(p.name + "\n" for p in finals))
        committed = True
        for p in finals:
            os.replace(staging / p.name, p)
    except OSError as exc:
        raise _os_error(finals[0], exc) from None
    finally:
        if committed:  # interrupted between renames: finish them, so the set is all new
            with contextlib.suppress(OSError):
                _finish_set(staging)
        shutil.rmtree(staging, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the final path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
