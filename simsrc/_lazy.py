"""Names a package loads on first use (PEP 562), so importing it stays cheap: see moesim/__init__.py."""
import importlib
import sys


def lazy(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for `package`: a name in `exports` is imported from its submodule the first time
    it is asked for, then kept; any other name is tried as a submodule (moesim.grid, moesim.trace.stats)."""
    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__():
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
