"""The layers import one way (issue 19): a pure core at the bottom, workers and dashboards beside each other on it,
the driver on top. Read from the source with ``ast``, so nothing is imported and every import is seen, including
the ones inside functions.

- ``orchestrator.core``: imports only itself among the project's packages, and none of the heavy or distributed
  libraries (no torch, Ray, transformers, TRL, PEFT, vLLM, datasets, tokenizers, plotly);
- ``workers`` and ``dashboards``: import ``orchestrator.core`` and themselves, never each other or the driver;
- the driver (``orchestrator`` outside ``core``) may import all three; only ``orchestrator.scheduler`` imports Ray;
- no import cycle in the project, at module level or patched with a late import inside a function (imports under
  ``if TYPE_CHECKING:`` are not executed and do not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "dashboards")
CORE = "orchestrator.core"
HEAVY = ("torch", "ray", "transformers", "trl", "peft", "vllm", "datasets", "tokenizers", "accelerate",
         "huggingface_hub", "plotly")
RAY_MODULE = "orchestrator.scheduler"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the three packages under ``root``, by dotted name."""
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


MODULES = find_modules(REPO)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, modules: dict[str, Path] = MODULES) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in a module; relative imports resolved, and
    ``from package import submodule`` read as an import of the submodule."""
    path = modules[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return  # not executed
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno, top))
        nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, top and not nested)

    for statement in tree.body:
        visit(statement, True)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(modules: dict[str, Path] = MODULES, root: Path = REPO) -> list[str]:
    problems = []
    for name in modules:
        for target, line, _ in imports(name, modules):
            where = f"{modules[name].relative_to(root)}:{line} imports {target}"
            project = next((p for p in PACKAGES if within(target, p)), None)
            heavy = next((h for h in HEAVY if within(target, h)), None)
            if within(name, CORE):
                if project is not None and not within(target, CORE):
                    problems.append(f"{where}: orchestrator.core imports only orchestrator.core")
                if heavy is not None:
                    problems.append(f"{where}: orchestrator.core stays free of {heavy}")
            elif within(name, "workers") or within(name, "dashboards"):
                own = "workers" if within(name, "workers") else "dashboards"
                if project is not None and not (within(target, own) or within(target, CORE)):
                    problems.append(f"{where}: {own} imports only {own} and orchestrator.core")
            if within(target, "ray") and name != RAY_MODULE:
                problems.append(f"{where}: Ray is imported only by {RAY_MODULE}")
    return problems


def import_cycles(modules: dict[str, Path] = MODULES) -> list[list[str]]:
    """Every cycle of the import graph, late imports included (one per strongly connected component), smallest
    first."""
    graph = {name: sorted({t for t, _, _ in imports(name, modules) if t in modules and t != name})
             for name in modules}
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def strongconnect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            strongconnect(node)
    return sorted(components, key=len)


def test_the_checks_name_each_planted_violation_and_cycle(tmp_path):
    # The rules are only as good as the reader: a nested, a relative, a from-submodule and a TYPE_CHECKING import.
    files = {
        "orchestrator/__init__.py": "",
        "orchestrator/core/__init__.py": "",
        "orchestrator/core/a.py": "from . import b\ndef f():\n    import torch\n",
        "orchestrator/core/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers import w\n",
        "workers/__init__.py": "",
        "workers/w.py": "from orchestrator.core import a\nfrom dashboards import d\n",
        "dashboards/__init__.py": "",
        "dashboards/d.py": "from dashboards.e import x\nimport ray\n",
        "dashboards/e.py": "def g():\n    import dashboards.d\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = find_modules(tmp_path)
    assert ("orchestrator.core.b", 1, True) in imports("orchestrator.core.a", modules)
    problems = sorted(layer_violations(modules, tmp_path))
    assert problems == [
        "dashboards/d.py:2 imports ray: Ray is imported only by orchestrator.scheduler",
        "orchestrator/core/a.py:3 imports torch: orchestrator.core stays free of torch",
        "workers/w.py:2 imports dashboards.d: workers imports only workers and orchestrator.core",
    ]
    assert import_cycles(modules) == [["dashboards.d", "dashboards.e"]]


def test_every_module_imports_only_the_layers_below_it():
    problems = layer_violations()
    assert not problems, "\n".join(problems)


def test_no_import_cycle_not_even_through_a_late_import():
    cycles = import_cycles()
    assert not cycles, "; ".join(" <-> ".join(c) for c in cycles)
