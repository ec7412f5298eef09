"""Files in and out: every output appears whole or not at all; every input is a regular file, read safely.

`atomic_write(path, write)` is the one way moesim writes a file (traces, fitted models, synth models,
figures): `write` fills a temporary sibling, which is flushed to disk and renamed over `path` only when
complete, and removed on any failure -- Ctrl-C, a full disk, a bug -- so a reader never sees half a file
and an earlier output survives a failed run. Errors from the file system become one ValueError naming the
file and the fix.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

# What a file name may hold, in bytes, where the file system does not say (ext4, xfs, btrfs, tmpfs: 255).
NAME_MAX = 255
_TMP_SUFFIX = ".part"
_TMP_RANDOM = 8  # mkstemp's random part


class OutputError(ValueError):
    """An output file that cannot be written: names the file, the reason and the fix."""


_FIXES = {
    errno.ENOSPC: "free some space on that disk or write somewhere else",
    errno.EDQUOT: "free some of your quota or write somewhere else",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a part of the folder path is a file, not a folder",
    errno.EEXIST: "a part of the folder path is a file, not a folder",
    errno.EISDIR: "the name is a folder: give a file name",
}


def output_error(path: str | os.PathLike, e: OSError) -> OutputError:
    why = e.strerror or str(e)
    fix = _FIXES.get(e.errno, "check the path and the disk")
    return OutputError(f"{path}: cannot write it ({why}); {fix}")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _temp_prefix(path: Path, limit: int) -> str:
    """'.NAME.' for the temporary, shortened when NAME is so long that the temporary's name would not fit."""
    room = limit - len(_TMP_SUFFIX) - _TMP_RANDOM - 2
    name = path.name.encode()
    if len(name) > room:
        name = name[:room].decode(errors="ignore").encode()
    return f".{name.decode()}."


class AtomicFile:
    """A temporary sibling of `path` to write (`.tmp`); commit() renames it to `path` once flushed to disk,
    discard() removes it. As a context manager: commit on a clean exit, discard on any exception (an OSError
    of the write becomes OutputError). File-system errors name the file and the fix."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        folder = self.path.parent
        try:
            if folder.exists() and not folder.is_dir():
                raise OutputError(f"{self.path}: cannot write it: {folder} is a file, not a folder")
            folder.mkdir(parents=True, exist_ok=True)
            limit = _name_max(folder)
            if len(self.path.name.encode()) > limit:
                raise OutputError(f"{self.path}: the file name is {len(self.path.name.encode())} bytes, too long for "
                                  f"this file system (at most {limit}); choose a shorter name")
            if self.path.is_dir():
                raise OutputError(f"{self.path}: is a folder; give a file name")
            fd, name = tempfile.mkstemp(prefix=_temp_prefix(self.path, limit), suffix=_TMP_SUFFIX, dir=folder)
            os.close(fd)
        except OSError as e:
            raise output_error(self.path, e) from e
        self.tmp: Path | None = Path(name)

    def commit(self) -> Path:
        try:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp makes the file private (0600); a finished output is as readable as any file the user writes
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise output_error(self.path, e) from e
        self.tmp = None
        _fsync_folder(self.path.parent)
        return self.path

    def discard(self) -> None:
        if self.tmp is not None:
            try:
                self.tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self.tmp = None

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(self.path, exc) from exc


def _fsync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder is flushed; not every file system allows it
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call write(temporary path), then put the finished file at `path` in one rename. Returns `path`."""
    with AtomicFile(path) as tmp:
        write(tmp)
    return Path(path)


# ---------------------------------------------------------------- inputs
def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` if it is an existing regular file; a named pipe, device or folder would block or mislead a reader."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ValueError(f"{path}: is {kind}, not a regular file; give the {what} itself")
    return path


def refuse_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """An output that is one of the inputs would replace what is being read: refuse it."""
    out = Path(out)
    for src in inputs:
        if src is None or "://" in str(src):
            continue
        src = Path(src)
        same = False
        try:
            same = out.exists() and src.exists() and os.path.samefile(out, src)
        except OSError:
            pass
        if same or out.resolve() == src.resolve():
            raise ValueError(f"{out}: {option} is one of the inputs ({src}); writing it would replace what is being "
                             f"read: choose another {option}")


def load_npz(path: str | os.PathLike, what: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an .npz (or one .npy as {'': array}), without pickle, each checked against its stored size
    before it is read, so a truncated file or a header that claims terabytes is one clear error, never an
    allocation. names: only these members (all when None). `what` says what the file should be."""
    path = regular_file(path, what)
    try:
        if path.suffix.lower() == ".npy" or not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                return {"": _read_npy(f, os.fstat(f.fileno()).st_size)}
        out = {}
        with zipfile.ZipFile(path) as z:
            members = {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
            for key in (members if names is None else [n for n in names if n in members]):
                info = z.getinfo(members[key])
                with z.open(info) as f:
                    out[key] = _read_npy(f, info.file_size, key)
        return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        if isinstance(e, _BadArray):
            raise ValueError(f"{path}: {e}; not a readable {what}") from None
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None


class _BadArray(ValueError):
    pass


def _read_npy(f, stored: int, key: str = "") -> np.ndarray:
    where = f"array '{key}'" if key else "the array"
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise _BadArray(f"{where} has an unknown .npy version {version}")
    if dtype.hasobject:
        raise _BadArray(f"{where} holds Python objects (moesim never unpickles)")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > stored:
        raise _BadArray(f"{where} claims shape {tuple(shape)} ({need:,} bytes) but the file holds {stored:,} bytes "
                        f"(truncated or corrupted)")
    data = bytearray(need)  # writable, so the array needs no copy
    view, got = memoryview(data), 0
    while got < need:
        n = f.readinto(view[got:])
        if not n:
            raise _BadArray(f"{where} is truncated: {got:,} of {need:,} bytes")
        got += n
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
