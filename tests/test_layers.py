"""The layering rules, each pinned by importing a floor in a fresh interpreter and looking at sys.modules, and no
import cycle among our modules (read from the source, so a cycle hidden behind a late import counts too)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "models")


def loaded_after(*imports: str) -> set[str]:
    """The name of every module loaded (sys.modules) after importing ``imports`` in a new interpreter."""
    code = ("import sys, json\n" + "".join(f"import {name}\n" for name in imports)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


TRAIN_FLOOR = ("search.train.config", "search.train.data", "search.train.augment", "search.train.engine",
               "search.train.metrics", "search.train.parallel", "search.train.replicates")


@pytest.mark.parametrize("imports", [TRAIN_FLOOR, ("models",)], ids=["search.train", "models"])
def test_train_floor_and_models_load_no_optuna_click_or_matplotlib(imports):
    loaded = loaded_after(*imports)
    for forbidden in ("optuna", "click", "matplotlib"):
        assert forbidden not in loaded, f"{' '.join(imports)} loads {forbidden}"


def test_models_know_nothing_of_search():
    assert not any(name == "search" or name.startswith("search.") for name in loaded_after("models"))


def test_hpo_floor_never_loads_the_results_floor_or_the_door():
    hpo = [f"search.hpo.{p.stem}" for p in sorted((ROOT / "search" / "hpo").glob("*.py")) if p.stem != "__init__"]
    loaded = loaded_after(*hpo)
    assert not {name for name in loaded if name.startswith("search.results")} and "search.cli" not in loaded
    # A worker loads matplotlib only where it draws its trial's figures (search/hpo/artifacts.py, late).
    assert "matplotlib" not in loaded_after(*(name for name in hpo if name != "search.hpo.trial_figures"))


def _imports(path: Path, module: str) -> set[str]:
    """Our modules that ``path`` imports anywhere in its body (late imports inside functions included)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


# The ground floor: what every floor may use (devices, environment, errors, stopping, quiet), so it uses none of them.
GROUND = ("search.devices", "search.env", "search.errors", "search.interrupt", "search.quiet")


def test_the_ground_floor_imports_no_floor_and_no_library_at_import():
    graph = import_graph()
    for module in GROUND:
        assert graph[module] <= set(GROUND) | {"search"}, f"{module} imports {graph[module] - set(GROUND)}"
    loaded = loaded_after(*GROUND)
    for forbidden in ("torch", "optuna", "click", "matplotlib"):
        assert forbidden not in loaded, f"the ground floor loads {forbidden}"


def test_nothing_imports_the_cli():
    users = [name for name, imported in import_graph().items() if "search.cli" in imported
             and name != "search.__main__"]
    assert users == []


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all it imports are checked

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


# Each floor by rank, the door highest: a module may import its own floor and those below, never one above.
FLOORS = {"search.cli": 5, "search.door": 5, "search.__main__": 5, "search.results": 4, "search.hpo": 3,
          "search.train": 2, "models": 1, "search": 0}


def floor(module: str) -> int:
    return max(rank for prefix, rank in FLOORS.items() if module == prefix or module.startswith(prefix + "."))


def test_dependencies_point_down_only():
    """The source, late imports included: e.g. no module of search.hpo imports search.results (a worker writes its
    trial's files through search/hpo/artifacts.py)."""
    upward = sorted(f"{name} -> {other}" for name, imported in import_graph().items() for other in imported
                    if floor(other) > floor(name))
    assert upward == []
