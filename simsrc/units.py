"""Units, parsed once at the edge (CLI, grid spec, config, hardware file) into SI: bytes, bytes/s, s, FLOP/s.

One rule everywhere: `B` is a byte and `b` a bit (`10Gb` is 1.25e9 bytes, `200Gbps` is 25e9 bytes/s);
SI prefixes are powers of 1000 (k, M, G, T) and binary ones powers of 1024 (Ki, Mi, Gi, Ti); numbers may
be written in scientific notation (`3.12e14`); `µs` and `us` are both microseconds. A bare number is in
the option's own unit, which its help says. Every error names the option it came from.
"""
from __future__ import annotations

import math
import re

# the units a bare number is read in, where the Python API and the CLI take plain numbers
GB = 1e9        # bandwidth: a bare number below SI_ABOVE is GB/s
SI_ABOVE = 1e6  # a bare bandwidth from here on is bytes/s (2e9 is a link of 2 GB/s: as GB/s it would be 2 EB/s)
US = 1e-6       # latency, launch cost: a bare number is microseconds
TFLOPS = 1e12   # GPU FLOP rate: a bare number below 1e6 is TFLOP/s

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15,
           "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}


def _number(value, option: str, what: str, example: str, allow_inf: bool = False) -> float:
    """A plain number given as int/float (not bool): finite (or +inf where a rate may be), else an error."""
    if isinstance(value, bool):
        raise ValueError(f"{option}: {value!r} is not {what}; write e.g. {example}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option}: {value!r} is not {what}; write e.g. {example}") from None
    if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)):
        raise ValueError(f"{option}: {value!r} is not a finite number; write e.g. {example}")
    return v


def _positive(v: float, option: str, text, example: str, allow_zero: bool) -> float:
    if v < 0 or (v == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{option}: {text!r} must be {bound}; write e.g. {example}")
    return v


def parse_bytes(text, option: str = "size", *, allow_zero: bool = True) -> float:
    """'12GiB', '3.5 GB', '8650752', '10Gb' (bits) -> bytes."""
    example = "12GiB, 300MB or 8650752"
    if not isinstance(text, str):
        return _positive(_number(text, option, "a size", example), option, text, example, allow_zero)
    m = re.fullmatch(rf"\s*{_NUMBER}\s*([kmgtpKMGTP]i?)?([bB])?\s*", text)
    if not m:
        raise ValueError(f"{option}: cannot read {text!r} as a size; write e.g. {example}")
    value = float(m.group(1)) * _PREFIX[(m.group(2) or "").lower()]
    if m.group(3) == "b":
        value /= 8
    return _positive(value, option, text, example, allow_zero)


def parse_rate(text, option: str = "bandwidth") -> float:
    """'25GB/s', '25 GiB/s', '200Gbps' (bits), 25 (GB/s: a bare number below SI_ABOVE), 2.5e10 (bytes/s)
    -> bytes per second."""
    example = "25GB/s, 16GiB/s or 200Gbps"
    if not isinstance(text, str):
        # +inf is allowed: an instant link, the bound of what prefetching can hide
        v = _number(text, option, "a bandwidth", example, True)
        return _positive(v * GB if v < SI_ABOVE else v, option, text, example, False)
    m = re.fullmatch(rf"\s*{_NUMBER}\s*([kmgtpKMGTP]i?)?(B/s|b/s|bps|Bps|B|b)?\s*", text)
    if not m:
        raise ValueError(f"{option}: cannot read {text!r} as a bandwidth; write e.g. {example}")
    prefix = m.group(2)
    # a bare '25' is GB/s like a bare number (a bare '2.5e10' bytes/s); '25B/s' is 25 bytes per second
    bare = float(m.group(1))
    value = bare * (_PREFIX[prefix.lower()] if prefix else (1.0 if m.group(3) or bare >= SI_ABOVE else GB))
    if m.group(3) in ("b/s", "bps", "b"):
        value /= 8
    return _positive(value, option, text, example, False)


def parse_seconds(text, option: str = "time", *, default_unit: float = US, allow_zero: bool = True) -> float:
    """'10us', '10µs', '2ms', '0.5s', '1e-5s', 10 (in default_unit) -> seconds."""
    example = "10us, 2ms or 0.5s"
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
    if not isinstance(text, str):
        v = _number(text, option, "a time", example) * default_unit
        return _positive(v, option, text, example, allow_zero)
    m = re.fullmatch(rf"\s*{_NUMBER}\s*(ns|us|µs|μs|ms|s)?\s*", text)
    if not m:
        raise ValueError(f"{option}: cannot read {text!r} as a time; write e.g. {example}")
    value = float(m.group(1)) * (scale[m.group(2)] if m.group(2) else default_unit)
    return _positive(value, option, text, example, allow_zero)


def parse_flops(text, option: str = "gpu_flops") -> float:
    """'312T', '312 TFLOPS', '3.12e14', 312 (TFLOP/s: a bare number below 1e6) -> FLOP/s."""
    example = "312T, 312TFLOPS or 3.12e14"
    if not isinstance(text, str):
        v = _number(text, option, "a FLOP rate", example, True)
        return _positive(v * TFLOPS if v < 1e6 else v, option, text, example, False)
    m = re.fullmatch(rf"\s*{_NUMBER}\s*([kmgtpKMGTP]?)(?:flop/?s|flops)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{option}: cannot read {text!r} as a FLOP rate; write e.g. {example}")
    value = float(m.group(1)) * _PREFIX[m.group(2).lower()]
    # a bare number below 1e6 is already in TFLOP/s (312); a large one is FLOP/s (3.12e14)
    if not m.group(2) and value < 1e6:
        value *= TFLOPS
    return _positive(value, option, text, example, False)


def parse_count(value, option: str, *, low: int = 0, high: int | None = None) -> int:
    """An integer option (copy engines, horizon, ...) within [low, high]; '2' and 2 alike, 2.5 and True refused."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{option}: {value!r} is not a whole number")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option}: {value!r} is not a whole number") from None
    if n < low or (high is not None and n > high):
        where = f"at least {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{option}: {value!r} must be {where}")
    return n


def parse_bool(value, option: str) -> bool:
    """True/False, or the words a TOML or CLI user writes ('true', 'no', '1'); anything else is an error."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}
    key = str(value).strip().lower()
    if key not in words:
        raise ValueError(f"{option}: {value!r} is not true or false")
    return words[key]
