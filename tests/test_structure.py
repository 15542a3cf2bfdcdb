"""The house: modules and functions within their limits, imports pointing down, no circles."""
import ast

import pytest
from conftest import REPO

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 60
MODULES = {p.stem: p for p in sorted(REPO.glob("*.py"))}
# the commands a user runs, that nothing else may build on (evaluation, dataset and model are scripts
# too, but their functions are shared below them)
ENTRY_POINTS = {"train", "inference", "predict", "benchmark", "synthetic", "face_image", "export", "serve"}
# predict.py shares inference.py's prediction path, and benchmark.py times it
ALLOWED_UP = {("predict", "inference"), ("benchmark", "inference")}


def imports_of(path):
    """Project modules a file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES) - {path.stem}


def test_no_module_over_the_line_limit():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_over_the_line_limit():
    long = []
    for name, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n}")
    assert not long, long


def test_imports_have_no_circles():
    graph = {name: imports_of(p) for name, p in MODULES.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nothing_imports_an_entry_point(name):
    up = {m for m in imports_of(MODULES[name]) if m in ENTRY_POINTS and (name, m) not in ALLOWED_UP}
    assert not up, f"{name} imports {up}: move what it needs into a shared module below"


def test_labels_come_from_labels_only():
    for name, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dataset":
                assert not {a.name for a in node.names} & {"TASKS", "YEARS", "decode", "encode", "MASK_NAMES"}, name
