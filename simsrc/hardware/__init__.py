"""Hardware: the host link and the GPU a replay runs against, in SI units, each figure with its source.

A preset is one TOML file in `presets/` (its name is the file's `name`); a user's own file (for example
what `moesim calibrate` writes) is read the same way by `--hardware FILE.toml`. Link figures are
sustained pinned host-to-device copy rates (what CUDA's bandwidthTest / nvbandwidth report), not the
PCIe line rate; GPU figures are datasheet peaks for dense bf16/fp16 tensor math and memory bandwidth.

Fields (a file writes them with units, e.g. "25GB/s", "10us", "312T", "80GiB"):

    bandwidth     host -> GPU link, bytes/s, over all its lanes
    latency       per transfer before its bytes flow (driver call, DMA set-up), s
    copy_engines  transfers that may be under way at once
    lanes         independent byte pipes the transfers under way share, each bandwidth / lanes; default 1
                  (PCIe: one pipe, so a lone copy gets the whole bandwidth; a phone's flash or an NVMe
                  drive read by several threads: one lane per reader, a lone read at its lane's rate);
                  at most copy_engines x stripes
    stripes       equal parts a transfer's bytes are split into, each taken by the earliest free lane (a
                  runtime that reads an expert's projection tensors as separate jobs: 3 for gate, up and
                  down); default 1
    gpu_flops     dense bf16/fp16 tensor FLOP/s
    hbm           GPU memory bandwidth, bytes/s
    launch        per kernel (a layer's dense part, one expert's GEMMs), s; default 5 us
    gpu_memory    bytes of GPU memory
    miss_overhead CPU bookkeeping per miss on the critical path (look-up, slot management, issuing the
                  copy), s, paid one miss after another; default 0
    overlap       fraction of a transfer's time the GPU can compute through (1: asynchronous copy engines;
                  0: a synchronous read the GPU waits out); default 1
    host_flops    the host's FLOP/s for experts computed there (the host action); default 1 TFLOP/s
    host_bandwidth  the host's memory bandwidth for reading an expert's weights, bytes/s; default 100 GB/s
    kv_bytes_per_token  KV-cache bytes per token per layer attention reads (a property of the model and its
                  KV dtype, carried here so a calibrated file replays as it was fitted); default none
    weight_bits   bits per weight of the experts as moved and read (4.5 for GGUF Q4_K_M); default: the
                  trace's dtype
    storage_bandwidth  storage -> host reads (NVMe, phone flash), bytes/s over all its lanes; default none: no
                  storage tier (every expert in host memory). Used with a host-tier cache (--host-capacity):
                  a host miss reads the expert from storage before the host -> GPU copy
    storage_latency  per read before its bytes flow (the device's read latency), s; default 0
    storage_lanes  reads under way at once, each on its own byte pipe of storage_bandwidth / storage_lanes
                  (a runtime's read threads or queues); default 1
    storage_stripes  equal parts a read is split into, each taken by the earliest free lane; default 1
    host_memory   bytes of host memory the model may use: the non-expert weights first, then the host tier
                  (--host-capacity auto takes what is left); the non-expert weights that do not fit are
                  re-read from storage every forward pass; default none (everything fits)
    source        where each figure comes from
"""
from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..registry import normalise, suggest
from ..units import US, parse_bytes, parse_count, parse_flops, parse_rate, parse_seconds

PRESET_DIR = Path(__file__).parent / "presets"
STORAGE_DIR = Path(__file__).parent / "storage"
STORAGE_FIELDS = ("storage_bandwidth", "storage_latency", "storage_lanes", "storage_stripes")


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth: float          # bytes/s
    latency: float            # s
    copy_engines: int
    gpu_flops: float          # FLOP/s
    hbm: float                # bytes/s
    launch: float = 5.0 * US  # s
    gpu_memory: float = 80.0 * 2**30  # bytes
    miss_overhead: float = 0.0  # s
    overlap: float = 1.0
    # a server CPU: AVX-512/AMX bf16 reaches 1-3 TFLOP/s, 8-12 DDR5 channels 100-400 GB/s (vendor sheets)
    host_flops: float = 1e12    # FLOP/s
    host_bandwidth: float = 100e9  # bytes/s
    lanes: int = 1
    stripes: int = 1
    kv_bytes_per_token: float | None = None  # bytes; None: attention's KV reads not charged
    weight_bits: float | None = None  # None: the trace's dtype
    storage_bandwidth: float | None = None  # bytes/s; None: no storage tier
    storage_latency: float = 0.0  # s
    storage_lanes: int = 1
    storage_stripes: int = 1
    host_memory: float | None = None  # bytes; None: the model's weights all fit
    source: str = ""

    def __post_init__(self):
        for f in ("bandwidth", "gpu_flops", "hbm", "host_flops", "host_bandwidth"):
            if not getattr(self, f) > 0:
                raise ValueError(f"hardware {self.name!r}: {f} must be more than zero, got {getattr(self, f)!r}")
        if not 0 <= self.overlap <= 1:
            raise ValueError(f"hardware {self.name!r}: overlap is a fraction in [0, 1], got {self.overlap!r}")
        for f in ("latency", "launch", "gpu_memory", "miss_overhead"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"hardware {self.name!r}: {f} must be zero or more, got {getattr(self, f)!r}")
        if int(self.copy_engines) < 1:
            raise ValueError(f"hardware {self.name!r}: copy_engines must be at least 1, got {self.copy_engines!r}")
        if int(self.stripes) < 1:
            raise ValueError(f"hardware {self.name!r}: stripes must be at least 1, got {self.stripes!r}")
        if not 1 <= int(self.lanes) <= int(self.copy_engines) * int(self.stripes):
            raise ValueError(f"hardware {self.name!r}: lanes is {self.lanes!r} with {self.copy_engines} copy engines "
                             f"of {self.stripes} stripe(s) each; a lane carries one part of a transfer at a time, so "
                             f"give 1 to copy_engines x stripes lanes (raise copy_engines or stripes with lanes)")
        if self.kv_bytes_per_token is not None and not self.kv_bytes_per_token >= 0:
            raise ValueError(f"hardware {self.name!r}: kv_bytes_per_token must be zero or more, got "
                             f"{self.kv_bytes_per_token!r}")
        if self.storage_bandwidth is not None and not self.storage_bandwidth > 0:
            raise ValueError(f"hardware {self.name!r}: storage_bandwidth must be more than zero, got "
                             f"{self.storage_bandwidth!r} (leave it out for no storage tier)")
        for f in ("storage_latency", "host_memory"):
            if getattr(self, f) is not None and not getattr(self, f) >= 0:
                raise ValueError(f"hardware {self.name!r}: {f} must be zero or more, got {getattr(self, f)!r}")
        for f in ("storage_lanes", "storage_stripes"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"hardware {self.name!r}: {f} must be at least 1, got {getattr(self, f)!r}")
        if self.weight_bits is not None and not 0 < self.weight_bits <= 32:
            raise ValueError(f"hardware {self.name!r}: weight_bits is bits per weight in (0, 32], got "
                             f"{self.weight_bits!r}")

    def with_overrides(self, **figures) -> "Hardware":
        """The same hardware with some figures replaced (SI values; None keeps the preset's)."""
        figures = {k: v for k, v in figures.items() if v is not None}
        return dataclasses.replace(self, **figures) if figures else self

    def to_toml(self) -> str:
        """The hardware as a file `--hardware FILE.toml` reads back exactly (figures in SI, as floats)."""
        lines = [f'name = "{self.name}"']
        for f in dataclasses.fields(self):
            if f.name in ("name", "source") or getattr(self, f.name) is None:
                continue
            if f.name in STORAGE_FIELDS and self.storage_bandwidth is None:
                continue  # no storage tier: its defaults say nothing
            lines.append(f"{f.name} = {getattr(self, f.name)!r}")
        lines.append(f"source = {_toml_string(self.source)}")
        return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# how each field of a hardware file is read: units as text, or plain SI numbers
_FIELDS = {
    "bandwidth": lambda v, o: parse_rate(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "latency": lambda v, o: parse_seconds(v, o) if isinstance(v, str) else _si(v, o),
    "copy_engines": lambda v, o: parse_count(v, o, low=1),
    "gpu_flops": lambda v, o: parse_flops(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "hbm": lambda v, o: parse_rate(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "launch": lambda v, o: parse_seconds(v, o) if isinstance(v, str) else _si(v, o),
    "gpu_memory": lambda v, o: parse_bytes(v, o),
    "miss_overhead": lambda v, o: parse_seconds(v, o) if isinstance(v, str) else _si(v, o),
    "overlap": lambda v, o: _fraction(v, o),
    "host_flops": lambda v, o: parse_flops(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "host_bandwidth": lambda v, o: parse_rate(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "lanes": lambda v, o: parse_count(v, o, low=1),
    "stripes": lambda v, o: parse_count(v, o, low=1),
    "kv_bytes_per_token": lambda v, o: parse_bytes(v, o) if isinstance(v, str) else _si(v, o),
    "weight_bits": lambda v, o: _si(v, o, low=0, strict=True) if _si(v, o) <= 32 else _bits_error(v, o),
    "storage_bandwidth": lambda v, o: parse_rate(v, o) if isinstance(v, str) else _si(v, o, low=0, strict=True),
    "storage_latency": lambda v, o: parse_seconds(v, o) if isinstance(v, str) else _si(v, o),
    "storage_lanes": lambda v, o: parse_count(v, o, low=1),
    "storage_stripes": lambda v, o: parse_count(v, o, low=1),
    "host_memory": lambda v, o: parse_bytes(v, o),
    "source": lambda v, o: str(v),
}


def _si(v, option: str, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{option}: {v!r} is not a number")
    v = float(v)
    if not (v > low if strict else v >= low) or v != v:
        raise ValueError(f"{option}: {v!r} must be {'more than' if strict else 'at least'} {low}")
    return v


def _bits_error(v, option: str):
    raise ValueError(f"{option}: {v!r} bits per weight; write e.g. 16, 8 or 4.5")


def _fraction(v, option: str) -> float:
    v = _si(v, option)
    if v > 1:
        raise ValueError(f"{option}: {v!r} is a fraction in [0, 1]")
    return v


def read_hardware_file(path: str | Path) -> Hardware:
    """A hardware TOML file (a preset, or one `moesim calibrate` wrote) -> Hardware; errors name file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such hardware file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a TOML hardware file ({e})") from None
    figures = {}
    for key, value in data.items():
        if key == "name":
            continue
        if key not in _FIELDS:
            raise ValueError(f"{path}: unknown field {key!r}{suggest(key, _FIELDS)}; fields are "
                             f"{', '.join(['name', *_FIELDS])}")
        figures[key] = _FIELDS[key](value, f"{path}: {key}")
    missing = [f for f in ("bandwidth", "latency", "copy_engines", "gpu_flops", "hbm") if f not in figures]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    return Hardware(name=str(data.get("name", path.stem)), **figures)


@functools.cache
def presets() -> dict[str, Hardware]:
    """Every preset in presets/, by name."""
    found = {}
    for f in sorted(PRESET_DIR.glob("*.toml")):
        hw = read_hardware_file(f)
        found[normalise(hw.name)] = hw
    return found


def get_hardware(name: str | Path | Hardware) -> Hardware:
    """A preset by name, a hardware TOML file by path, or a Hardware as it is."""
    if isinstance(name, Hardware):
        return name
    text = str(name)
    if text.endswith(".toml") or Path(text).suffix == ".toml":
        return read_hardware_file(text)
    key = normalise(text)
    if key not in presets():
        raise ValueError(f"unknown hardware preset {text!r}{suggest(key, presets())}; choose one of "
                         f"{', '.join(presets())}, give a hardware FILE.toml, or override figures with "
                         f"--bandwidth/--latency/--gpu-flops")
    return presets()[key]


@dataclass(frozen=True)
class Storage:
    """A storage device preset (`--storage NAME`): the storage_* figures it gives a Hardware, and their source."""
    name: str
    figures: dict
    source: str


@functools.cache
def storage_presets() -> dict[str, Storage]:
    """Every storage device in storage/, by name: a TOML file of storage_* fields and their source."""
    found = {}
    for f in sorted(STORAGE_DIR.glob("*.toml")):
        data = tomllib.loads(f.read_text(encoding="utf-8"))
        unknown = sorted(set(data) - {"name", "source", *STORAGE_FIELDS})
        if unknown or "storage_bandwidth" not in data:
            raise ValueError(f"{f}: a storage preset holds name, source and {', '.join(STORAGE_FIELDS)} "
                             f"(storage_bandwidth at least); found {', '.join(unknown) or 'no storage_bandwidth'}")
        figures = {k: _FIELDS[k](v, f"{f}: {k}") for k, v in data.items() if k in STORAGE_FIELDS}
        found[normalise(data["name"])] = Storage(data["name"], figures, str(data.get("source", "")))
    return found


def get_storage(name: str) -> Storage:
    key = normalise(str(name))
    if key not in storage_presets():
        raise ValueError(f"--storage: unknown storage device {name!r}{suggest(key, storage_presets())}; choose one "
                         f"of {', '.join(storage_presets())}, or give --storage-bandwidth")
    return storage_presets()[key]


def with_storage(hw: Hardware, name: str) -> Hardware:
    """The hardware with a storage device's figures (its own storage_* figures, if any, replaced)."""
    dev = get_storage(name)
    figures = {"storage_latency": 0.0, "storage_lanes": 1, "storage_stripes": 1, **dev.figures}
    source = f"{hw.source}; storage {dev.name}: {dev.source}" if hw.source else f"storage {dev.name}: {dev.source}"
    return dataclasses.replace(hw, source=source, **figures)


DTYPE_BYTES = {"float32": 4.0, "fp32": 4.0, "bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0,
               "int8": 1.0, "fp8": 1.0, "float8": 1.0, "int4": 0.5, "fp4": 0.5, "mxfp4": 0.53,
               # GGUF (llama.cpp): bits per weight of each block format, scales included (k-quants: 256-weight
               # super-blocks, Q2_K 2.5625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625 bpw, as ggml's k-quants
               # description gives them; Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: 18 / 20 / 22 / 24 / 34 bytes per 32
               # weights). A mix (Q4_K_M) is read as its base format: its expert tensors are mostly that.
               "q2_k": 2.5625 / 8, "q3_k": 3.4375 / 8, "q4_k": 4.5 / 8, "q5_k": 5.5 / 8, "q6_k": 6.5625 / 8,
               "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32, "q8_0": 34 / 32}


def dtype_bytes(dtype: str) -> float:
    """Bytes per weight for a dtype name; unknown names count as 2 (bf16), the common case."""
    d = (dtype or "").lower()
    for key, size in DTYPE_BYTES.items():
        if key in d:
            return size
    return 2.0


__all__ = ["Hardware", "DTYPE_BYTES", "Storage", "dtype_bytes", "get_hardware", "get_storage", "presets",
           "read_hardware_file", "storage_presets", "with_storage"]
