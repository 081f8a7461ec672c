"""Adapters: the registry (:mod:`.registry`) and one module per adapter in this package (imported here)."""

import importlib
import pkgutil

from workers.adapters.registry import Adapter, adapter_names, get_adapter, register_adapter, unregister_adapter

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Adapter", "adapter_names", "get_adapter", "register_adapter", "unregister_adapter"]
