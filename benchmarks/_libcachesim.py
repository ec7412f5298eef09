"""libCacheSim on a moesim access stream: the oracleGeneral trace file and hit counts from its Python reader.

tests/test_replay_count.py keeps its own small writer: tests import from tests/
only, and benchmarks/ is not a package they could import without path tricks.
This one writes in chunks so a 100 M-access stream (2.4 GB of records) never
sits in memory whole.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# libCacheSim's oracleGeneral record (its oracleGeneralBin reader), 24 bytes packed:
# uint32 timestamp, uint64 object id, uint32 size, int64 position of the object's next access (-1: none)
ORACLE_GENERAL = np.dtype([("clock", "<u4"), ("obj", "<u8"), ("size", "<u4"), ("next", "<i8")])
POLICIES = ("lru", "fifo", "lfu", "belady")


def next_access(items: np.ndarray) -> np.ndarray:
    """Position of each access's next access to the same item, -1 if none (what Belady reads)."""
    order = np.argsort(items, kind="stable")
    nxt = np.full(len(items), -1, np.int64)
    same = items[order[1:]] == items[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def write_oracle_general(items: np.ndarray, path: str | os.PathLike, *, chunk: int = 1 << 22) -> Path:
    """Write an access stream (item ids) as libCacheSim's oracleGeneral binary, atomically.

    Object ids are item + 1 (libCacheSim treats id 0 as no object); every object has size 1,
    so a cache of N bytes holds N experts; the clock advances every 1000 accesses.
    """
    path = Path(path)
    items = np.asarray(items)
    nxt = next_access(items)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        for start in range(0, len(items), chunk):
            stop = min(start + chunk, len(items))
            rec = np.empty(stop - start, ORACLE_GENERAL)
            rec["clock"] = np.arange(start, stop) // 1000
            rec["obj"] = items[start:stop].astype(np.uint64) + 1
            rec["size"] = 1
            rec["next"] = nxt[start:stop]
            rec.tofile(f)
    os.replace(tmp, path)
    return path


def cache_class(policy: str):
    import libcachesim
    return {"lru": libcachesim.LRU, "fifo": libcachesim.FIFO, "lfu": libcachesim.LFU,
            "belady": libcachesim.Belady}[policy]


def process(path: str | os.PathLike, policy: str, capacity: int) -> float:
    """Run libCacheSim's `policy` with `capacity` objects over the file; returns its miss ratio."""
    import libcachesim
    reader = libcachesim.TraceReader(str(path), libcachesim.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = cache_class(policy)(capacity).process_trace(reader)
    return float(miss_ratio)


def hits_from_miss_ratio(miss_ratio: float, accesses: int) -> int:
    # libCacheSim reports misses / requests as a double; exact for any count below 2**53
    return int(round((1.0 - miss_ratio) * accesses))
