"""One way to register the parts of a family: policies, predictors, action rules, importers, plot kinds.

A part is a module in its family's package that declares `NAME` (and, if it
wants, `ALIASES` and `ORDER`, its place in lists) at its top level as plain
literals. The family finds its parts by reading those lines from the files in
the package, so adding a part is adding a file: the CLI choices, the README
tables and the contract tests all read the registry. The names are read
without importing the modules (a `--help` or a typo costs no numba import);
a module is imported when it is first asked for. Modules whose names start
with `_` are helpers, not parts. Names are normalised once: case, surrounding
spaces, and `_` against `-` do not matter ('LFU_DA', 'lfu-da').
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType


def normalise(name: str) -> str:
    """The one spelling a name is compared in: lower case, '-' for '_', no surrounding spaces."""
    return str(name).strip().lower().replace("_", "-")


class Part:
    """What a part's file says of itself, read without importing it."""

    def __init__(self, name: str, module: str, aliases: tuple, order: int, summary: str):
        self.name, self.module, self.aliases, self.order, self.summary = name, module, aliases, order, summary


def _declared(path: Path) -> dict:
    """NAME, ALIASES, ORDER and the docstring of a module file, as literals."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {"doc": ast.get_docstring(tree) or ""}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("NAME", "ALIASES", "ORDER"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


class Registry:
    """The parts of one family, found in `package` (a dotted module name) by their NAME."""

    def __init__(self, family: str, package: str):
        self.family = family
        self.package = package
        self._parts: dict[str, Part] | None = None
        self._aliases: dict[str, str] = {}

    def _load(self) -> dict[str, Part]:
        if self._parts is None:
            spec = importlib.util.find_spec(self.package)
            found: dict[str, Part] = {}
            for folder in spec.submodule_search_locations:
                for path in sorted(Path(folder).glob("*.py")):
                    if path.stem.startswith("_"):
                        continue
                    d = _declared(path)
                    if "NAME" not in d:
                        continue
                    name = normalise(d["NAME"])
                    if name in found:
                        raise RuntimeError(f"two {self.family} modules call themselves {name!r}: "
                                           f"{found[name].module} and {path.stem}")
                    aliases = tuple(normalise(a) for a in d.get("ALIASES", ()))
                    summary = d["doc"].strip().splitlines()[0] if d["doc"].strip() else ""
                    found[name] = Part(name, f"{self.package}.{path.stem}", aliases, int(d.get("ORDER", 100)),
                                       summary)
                    for alias in aliases:
                        self._aliases[alias] = name
            self._parts = dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
        return self._parts

    def names(self) -> list[str]:
        """Registered names, in the order the family lists them (a module's ORDER, then name)."""
        return list(self._load())

    def canonical(self, name: str) -> str:
        """The registered name for `name` (aliases and spellings alike), or an error naming the nearest."""
        parts = self._load()
        key = normalise(name)
        key = self._aliases.get(key, key)
        if key not in parts:
            raise ValueError(f"unknown {self.family} {name!r}{suggest(key, [*parts, *self._aliases])}; "
                             f"choose one of {', '.join(parts)}")
        return key

    def get(self, name: str) -> ModuleType:
        """The part's module (imported now if it was not yet)."""
        return importlib.import_module(self._load()[self.canonical(name)].module)

    def items(self):
        """(name, module) of every part, each imported (for what a file's literals cannot say)."""
        return [(name, self.get(name)) for name in self.names()]

    def parts(self) -> list[Part]:
        return list(self._load().values())

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except ValueError:
            return False
        return True

    def table(self) -> str:
        """A Markdown table of the parts: name, aliases, and the first line of each docstring."""
        rows = ["| name | aliases | what it does |", "| --- | --- | --- |"]
        for part in self.parts():
            rows.append(f"| `{part.name}` | {', '.join(part.aliases)} | {part.summary} |")
        return "\n".join(rows)


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' for the nearest choice, or ''."""
    near = difflib.get_close_matches(normalise(word), [normalise(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
