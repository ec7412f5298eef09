"""The README's generated tables: replay options, policies, predictors, hardware and storage presets, plot kinds.

Each comes from its registry or from the config, so the README cannot drift from the code:
`python -m moesim.docs` rewrites the README between `<!-- generated: NAME -->` and
`<!-- end generated -->`, and `python -m moesim.docs --check` (run by the tests) fails when a table is stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def policies_table() -> str:
    from . import policies
    rows = ["| policy | what it evicts (the module's docstring says the source and the tie-break) | checked against |",
            "| --- | --- | --- |"]
    for part in policies.POLICIES.parts():
        module = policies.get(part.name)
        twin = getattr(module, "LIBCACHESIM", None)
        rows.append(f"| `{part.name}` | {part.summary} | "
                    f"{f'libCacheSim {twin}, hit for hit' if twin else 'the contract suite'} |")
    return "\n".join(rows)


def predictors_table() -> str:
    from .predict import PREDICTORS
    rows = ["| `--predictor` | what it is | needs |", "| --- | --- | --- |"]
    for part in PREDICTORS.parts():
        module = PREDICTORS.get(part.name)
        needs = "`--train`" if module.NEEDS_TRAIN else ("a model file" if part.name == "learned" else "")
        name = "learned:MODEL" if part.name == "learned" else part.name
        rows.append(f"| `{name}` | {part.summary.split(': ', 1)[-1]} | {needs} |")
    return "\n".join(rows)


def hardware_table() -> str:
    from .hardware import presets
    from .units import GB, TFLOPS, US
    rows = ["| preset | link GB/s | latency µs | copy engines | TFLOP/s | HBM GB/s | launch µs | GPU GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h in presets().values():
        rows.append(f"| `{h.name}` | {h.bandwidth / GB:,g} | {h.latency / US:g} | {h.copy_engines} | "
                    f"{h.gpu_flops / TFLOPS:,g} | {h.hbm / GB:,g} | {h.launch / US:g} | {h.gpu_memory / 2**30:g} |")
    return "\n".join(rows)


def storage_table() -> str:
    from .hardware import storage_presets
    from .units import GB, US
    rows = ["| `--storage` | read GB/s | latency µs | lanes | stripes | source |", "| --- | --- | --- | --- | --- | --- |"]
    for d in storage_presets().values():
        f = {"storage_latency": 0.0, "storage_lanes": 1, "storage_stripes": 1, **d.figures}
        rows.append(f"| `{d.name}` | {f['storage_bandwidth'] / GB:,g} | {f['storage_latency'] / US:g} | "
                    f"{f['storage_lanes']} | {f['storage_stripes']} | {d.source} |")
    return "\n".join(rows)


def options_table() -> str:
    from .config import options_table as table
    return table()


def actions_table() -> str:
    from .actions import ACTIONS
    rows = ["| `--action` | what a miss does |", "| --- | --- |"]
    for part in ACTIONS.parts():
        rows.append(f"| `{part.name}` | {part.summary.split(': ', 1)[-1]} |")
    return "\n".join(rows)


def plot_kinds_table() -> str:
    from . import plots
    return plots.table()


TABLES = {"replay-options": options_table, "policies": policies_table, "predictors": predictors_table,
          "hardware": hardware_table, "storage": storage_table, "plot-kinds": plot_kinds_table, "actions": actions_table}
_BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def render(text: str) -> str:
    """The README text with every generated block rebuilt."""
    def block(m):
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(f"README: unknown generated block {name!r}; known: {', '.join(TABLES)}")
        return f"{m.group(1)}{TABLES[name]()}\n{m.group(4)}"
    return _BLOCK.sub(block, text)


def main(argv: list[str]) -> int:
    readme = Path(argv[argv.index("--readme") + 1]) if "--readme" in argv else Path("README.md")
    text = readme.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{readme}: generated tables are stale; run `python -m moesim.docs`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
