"""Hardware presets: the host link and the GPU, each figure with its source.

Link figures are sustained pinned host-to-device copy rates (what CUDA's
bandwidthTest / nvbandwidth report), not the PCIe line rate; GPU figures are
datasheet peaks for dense bf16/fp16 tensor math and memory bandwidth.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth_gbps: float   # host -> GPU, GB/s (1e9 bytes/s)
    latency_us: float       # per transfer: driver call, DMA set-up
    copy_engines: int       # transfers that may be under way at once
    gpu_tflops: float       # dense bf16/fp16 tensor TFLOP/s
    hbm_gbps: float         # GPU memory bandwidth, GB/s
    launch_us: float = 5.0  # per kernel (an expert's GEMMs, a layer's dense part)
    gpu_mem_gib: float = 80.0
    source: str = ""

    def with_overrides(self, **kw) -> "Hardware":
        kw = {k: v for k, v in kw.items() if v is not None}
        return dataclasses.replace(self, **kw) if kw else self


_PCIE = {
    # line rate x16 -> sustained pinned H2D measured on typical servers
    3: (15.75, 12.0, "PCIe 3.0 x16: 8 GT/s x 16 lanes, 128b/130b = 15.75 GB/s; bandwidthTest pinned H2D ~12 GB/s"),
    4: (31.5, 25.0, "PCIe 4.0 x16: 16 GT/s -> 31.5 GB/s; bandwidthTest pinned H2D ~24-26 GB/s on A100 hosts"),
    5: (63.0, 50.0, "PCIe 5.0 x16: 32 GT/s -> 63 GB/s; pinned H2D ~50-55 GB/s reported on H100 PCIe hosts"),
}

PRESETS: dict[str, Hardware] = {
    h.name: h for h in [
        Hardware("a100-pcie3", _PCIE[3][1], 10.0, 2, 312.0, 1935.0, gpu_mem_gib=80,
                 source="A100 80GB PCIe datasheet: 312 TFLOPS bf16 dense, 1,935 GB/s HBM2e; " + _PCIE[3][2]),
        Hardware("a100-pcie4", _PCIE[4][1], 10.0, 2, 312.0, 1935.0, gpu_mem_gib=80,
                 source="A100 80GB PCIe datasheet: 312 TFLOPS bf16 dense, 1,935 GB/s HBM2e; " + _PCIE[4][2]),
        Hardware("h100-pcie5", _PCIE[5][1], 10.0, 2, 756.0, 2000.0, gpu_mem_gib=80,
                 source="H100 PCIe datasheet: 756 TFLOPS bf16 dense, 2.0 TB/s HBM2e; " + _PCIE[5][2]),
        # link measured (benchmarks/link_h100.json): 20 us is a lone copy's issue-to-arrival from an idle
        # stream; copies queued back to back hide it behind the previous copy's bytes, which is what two
        # engines sharing one pipe model (k = 1..8 expert batches within -2.4..+4.5 % of the measurement)
        Hardware("h100-sxm-pcie5", 53.0, 20.0, 2, 989.0, 3350.0, gpu_mem_gib=80,
                 source="H100 SXM datasheet: 989 TFLOPS bf16 dense, 3.35 TB/s HBM3; host link measured with "
                        "benchmarks/bench_link.py on NVIDIA H100 80GB HBM3, PCIe 5.0 x16, 2026-11-23: pinned H2D "
                        "52-55 GB/s sustained (fit 53 GB/s), ~20 us from issue to arrival of a lone copy "
                        "(~7.5 us of it DMA set-up), a second stream adds no H2D bandwidth (1.00-1.09x)"),
        Hardware("rtx4090-pcie4", 24.0, 10.0, 2, 165.0, 1008.0, gpu_mem_gib=24,
                 source="Ada whitepaper, RTX 4090: 165 TFLOPS fp16 tensor (fp32 accumulate, dense), "
                        "1,008 GB/s GDDR6X, 24 GB; consumer PCIe 4.0 x16 hosts measure ~22-25 GB/s pinned H2D"),
        Hardware("rtx3090-pcie4", 24.0, 10.0, 2, 71.0, 936.0, gpu_mem_gib=24,
                 source="Ampere GA102 whitepaper, RTX 3090: 71 TFLOPS fp16 tensor (fp32 accumulate, dense), "
                        "936 GB/s GDDR6X, 24 GB; PCIe 4.0 x16 host as for the 4090"),
        Hardware("gh200-c2c", 400.0, 5.0, 2, 989.0, 4000.0, gpu_mem_gib=96,
                 source="GH200 datasheet: NVLink-C2C 900 GB/s total = 450 GB/s per direction, CPU->GPU copies "
                        "measured ~375-420 GB/s; H100 96GB: 989 TFLOPS bf16 dense, 4 TB/s HBM3"),
    ]
}


def get_hardware(name: str) -> Hardware:
    if name not in PRESETS:
        raise ValueError(f"unknown hardware preset {name!r}; choose one of {', '.join(PRESETS)} "
                         f"or override figures with --bandwidth/--latency/--gpu-tflops")
    return PRESETS[name]


_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str | int | float) -> float:
    """'12GiB', '3.5 GB', '8650752' -> bytes."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgtKMGT]i?)?[bB]?\s*", text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 12GiB, 300MB or 8650752")
    return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def parse_bandwidth_gbps(text: str | float) -> float:
    """'25GB/s', '25 GiB/s', '200Gbps', 25 -> GB/s (1e9 bytes per second)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgtKMGT]i?)?(B/s|b/s|bps|Bps)?\s*", text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a bandwidth; write e.g. 25GB/s, 16GiB/s or 200Gbps")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "g").lower()]
    if m.group(3) in ("b/s", "bps"):
        value /= 8
    return value / 1e9


def parse_tflops(text: str | float) -> float:
    """'312T', '312 TFLOPS', '3.12e14', 312 (already TFLOP/s) -> TFLOP/s."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgtpKMGTP]?)(?:flop/?s|flops)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read {text!r} as a FLOP rate; write e.g. 312T, 312TFLOPS or 3.12e14")
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}[m.group(2).lower()]
    value = float(m.group(1)) * scale
    # a bare number below 1e6 is already in TFLOP/s (312); a large one is FLOP/s (3.12e14)
    return value if not m.group(2) and value < 1e6 else value / 1e12


def parse_seconds(text: str | float, default_unit: str = "us") -> float:
    """'10us', '2ms', '0.5s', 10 (in default_unit) -> seconds."""
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    if isinstance(text, (int, float)):
        return float(text) * scale[default_unit]
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ns|us|ms|s)?\s*", text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a time; write e.g. 10us, 2ms or 0.5s")
    return float(m.group(1)) * scale[m.group(2) or default_unit]


DTYPE_BYTES = {"float32": 4.0, "fp32": 4.0, "bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0,
               "int8": 1.0, "fp8": 1.0, "float8": 1.0, "int4": 0.5, "fp4": 0.5, "mxfp4": 0.53}


def dtype_bytes(dtype: str) -> float:
    """Bytes per weight for a dtype name; unknown names count as 2 (bf16), the common case."""
    d = (dtype or "").lower()
    for key, size in DTYPE_BYTES.items():
        if key in d:
            return size
    return 2.0
