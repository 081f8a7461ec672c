"""Tasks: the registry (:mod:`.registry`) and one module per task in this package (imported here)."""

import importlib
import pkgutil

from workers.tasks.registry import RewardFunction, Task, get_task, register_task, task_names, unregister_task

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RewardFunction", "Task", "get_task", "register_task", "task_names", "unregister_task"]
