"""A module loaded at its first attribute access (:class:`importlib.util.LazyLoader`).

For command-line entry points whose parser and ``--help`` must not pay for modules only some
commands use. The module is registered in ``sys.modules`` at once, so a later ordinary import gets
the same (then loaded) module, never a second copy.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_module"]


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
