"""Access streams cached on disk, so a trace replayed again skips reading and laying it out.

Reading a 14.7 M-access trace and laying out its stream costs about twice the
LRU replay it feeds; mapping the stream from this cache costs a few milliseconds.

- **Content-addressed.** An entry is named by the sha256 of the trace file's
  bytes, the stream's options (prefill_chunk) and a digest of the code that
  lays streams out, so a copied or renamed trace hits the same entry and a
  changed layout never serves an old one.
- **Invalidated by the file's fingerprint.** A small note per file version
  (its resolved path, device, inode, size, mtime and ctime) remembers that
  hash and that the file passed read_trace's checks, so a hit neither hashes
  the file nor checks it again; any write to the file changes its ctime and
  so misses the note.
- **Atomic.** Entries and notes are written to a temporary file and renamed.
  Readers map an entry copy-on-write: the arrays are ordinary writable numpy
  arrays, paged in only where the replay touches them.

Where: $MOESIM_CACHE_DIR, else $XDG_CACHE_HOME/moesim, else ~/.cache/moesim
(streams/ below it). MOESIM_CACHE=off turns it off. The folder is kept under
MOESIM_CACHE_MAX_BYTES (default 8 GiB) by removing the least recently used
entries; a stream larger than half of that is not cached.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
MAGIC = b"moesim-stream\x00\x00\x01"  # 16 bytes
ALIGN = 64
DEFAULT_MAX_BYTES = 8 << 30
# stream.access_stream's output depends on these files only
_LAYOUT_SOURCES = ("kernels.py", "stream.py")
_layout_digest: str | None = None


def cache_dir() -> Path | None:
    """The stream cache's folder, or None when MOESIM_CACHE=off."""
    if os.environ.get("MOESIM_CACHE", "").strip().lower() in ("0", "off", "no", "false"):
        return None
    root = os.environ.get("MOESIM_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "moesim"
    return base / "streams"


def max_bytes() -> int:
    raw = os.environ.get("MOESIM_CACHE_MAX_BYTES")
    if not raw:
        return DEFAULT_MAX_BYTES
    from ..hardware import parse_bytes
    try:
        return int(parse_bytes(raw))
    except ValueError:
        raise ValueError(f"MOESIM_CACHE_MAX_BYTES={raw!r}: write a size such as 8GiB or 500MB") from None


@dataclass(frozen=True)
class FileState:
    """What the file system says about one version of a file: any write changes it."""

    path: str  # resolved
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileState":
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def key(self) -> str:
        text = json.dumps([self.path, self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def layout_digest() -> str:
    global _layout_digest
    if _layout_digest is None:
        h = hashlib.sha256(FORMAT.to_bytes(4, "little"))
        here = Path(__file__).parent
        for name in _LAYOUT_SOURCES:
            try:
                h.update((here / name).read_bytes())
            except OSError:  # installed without sources: the version has to stand for them
                from .. import __version__
                h.update(__version__.encode())
        _layout_digest = h.hexdigest()[:16]
    return _layout_digest


# ---------------------------------------------------------------- notes: file version -> content hash
def checked_sha256(state: FileState) -> str | None:
    """The content hash of this file version if it passed read_trace's checks before, else None."""
    root = cache_dir()
    if root is None:
        return None
    try:
        note = json.loads((root / "files" / f"{state.key()}.json").read_text())
    except (OSError, ValueError):
        return None
    return note.get("sha256") if note.get("checked") is True else None


def remember_checked(state: FileState, sha256: str) -> None:
    root = cache_dir()
    if root is None:
        return
    note = json.dumps({"path": state.path, "sha256": sha256, "checked": True}).encode()
    _write_atomic(root / "files" / f"{state.key()}.json", [note])


# ---------------------------------------------------------------- stream entries
def _entry(root: Path, sha256: str, options: dict) -> Path:
    opts = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    return root / f"{sha256[:32]}-{opts}-{layout_digest()}.stream"


def load_stream(sha256: str, options: dict) -> dict | None:
    """The cached stream's fields (arrays mapped copy-on-write, and scalars), or None."""
    root = cache_dir()
    if root is None:
        return None
    path = _entry(root, sha256, options)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
                return None
            header = json.loads(f.read(int.from_bytes(head[len(MAGIC):], "little")))
            if header.get("size") != os.fstat(f.fileno()).st_size:
                return None  # not the file this header describes: ignore it, it will be written again
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        os.utime(path)  # least recently used goes first when the folder is trimmed
    except (OSError, ValueError):
        return None
    fields = dict(header["scalars"])
    for name, (dtype, length, offset) in header["arrays"].items():
        fields[name] = np.frombuffer(mm, dtype=np.dtype(dtype), count=length, offset=offset)
    return fields


def save_stream(sha256: str, options: dict, arrays: dict[str, np.ndarray], scalars: dict) -> None:
    """Write one entry atomically; a full disk or a read-only folder only means no cache."""
    root = cache_dir()
    if root is None:
        return
    table = {}
    offset = 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        arrays[name] = arr
        table[name] = [arr.dtype.str, int(arr.size), offset]
        offset += -(-arr.nbytes // ALIGN) * ALIGN
    # the header's length depends on the offsets, which depend on the header's length: fix the
    # data's start at a size the header cannot reach, then shift
    probe = json.dumps({"arrays": table, "scalars": scalars, "size": 0}).encode()
    start = -(-(len(MAGIC) + 8 + len(probe) + 64) // ALIGN) * ALIGN
    for entry in table.values():
        entry[2] += start
    size = start + offset
    if size > max_bytes() // 2:
        return
    header = json.dumps({"arrays": table, "scalars": scalars, "size": size}).encode()
    head = MAGIC + len(header).to_bytes(8, "little") + header
    chunks = [head + b"\0" * (start - len(head))]
    for name, arr in arrays.items():
        chunks.append(arr)
        pad = -arr.nbytes % ALIGN
        if pad:
            chunks.append(b"\0" * pad)
    try:
        _write_atomic(_entry(root, sha256, options), chunks)
        _trim(root, max_bytes())
    except OSError:
        pass


def _write_atomic(path: Path, chunks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(memoryview(c).cast("B") if isinstance(c, np.ndarray) else c)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _trim(root: Path, limit: int) -> None:
    """Remove the least recently used entries until the folder holds at most `limit` bytes."""
    files = []
    for p in root.glob("*.stream"):
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, st.st_size, p))
    total = sum(s for _, s, _ in files)
    for _, size, p in sorted(files):
        if total <= limit:
            break
        p.unlink(missing_ok=True)
        total -= size


def clear() -> int:
    """Remove every cached stream and note; returns how many files went."""
    root = cache_dir()
    if root is None or not root.exists():
        return 0
    gone = 0
    for p in [*root.glob("*.stream"), *root.glob("files/*.json"), *root.glob(".*.part"),
              *root.glob("files/.*.part")]:
        p.unlink(missing_ok=True)
        gone += 1
    return gone
