"""One way to register the parts of a family: policies, predictors, action rules, importers, plot kinds.

A part is a module in its family's package that declares `NAME` (and, if it
wants, `ALIASES`) at its top. The family finds its modules by listing the
package, so adding a part is adding a file: the CLI choices, the README tables
and the contract tests all read the registry. Modules whose names start with
`_` are helpers, not parts. Names are normalised once: case, surrounding
spaces, and `_` against `-` do not matter ('LFU_DA', 'lfu-da').
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from types import ModuleType


def normalise(name: str) -> str:
    """The one spelling a name is compared in: lower case, '-' for '_', no surrounding spaces."""
    return str(name).strip().lower().replace("_", "-")


class Registry:
    """The parts of one family, found in `package` (a dotted module name) by their NAME."""

    def __init__(self, family: str, package: str):
        self.family = family
        self.package = package
        self._modules: dict[str, ModuleType] | None = None
        self._aliases: dict[str, str] = {}

    def _load(self) -> dict[str, ModuleType]:
        if self._modules is None:
            pkg = importlib.import_module(self.package)
            found: dict[str, ModuleType] = {}
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{self.package}.{info.name}")
                if not hasattr(module, "NAME"):
                    continue
                name = normalise(module.NAME)
                if name in found:
                    raise RuntimeError(f"two {self.family} modules call themselves {name!r}: "
                                       f"{found[name].__name__} and {module.__name__}")
                found[name] = module
                for alias in getattr(module, "ALIASES", ()):
                    self._aliases[normalise(alias)] = name
            self._modules = dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 100), kv[0])))
        return self._modules

    def names(self) -> list[str]:
        """Registered names, in the order the family lists them (a module's ORDER, then name)."""
        return list(self._load())

    def canonical(self, name: str) -> str:
        """The registered name for `name` (aliases and spellings alike), or an error naming the nearest."""
        modules = self._load()
        key = normalise(name)
        key = self._aliases.get(key, key)
        if key not in modules:
            raise ValueError(f"unknown {self.family} {name!r}{suggest(key, [*modules, *self._aliases])}; "
                             f"choose one of {', '.join(modules)}")
        return key

    def get(self, name: str) -> ModuleType:
        return self._load()[self.canonical(name)]

    def items(self):
        return self._load().items()

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except ValueError:
            return False
        return True

    def table(self) -> str:
        """A Markdown table of the parts: name, aliases, and the first line of each docstring."""
        rows = ["| name | aliases | what it does |", "| --- | --- | --- |"]
        for name, module in self.items():
            aliases = ", ".join(getattr(module, "ALIASES", ())) or ""
            doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
            rows.append(f"| `{name}` | {aliases} | {doc} |")
        return "\n".join(rows)


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' for the nearest choice, or ''."""
    near = difflib.get_close_matches(normalise(word), [normalise(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
