"""The house: scripts at the top, the library in masktk/ below them, modules and functions within their limits,
imports pointing down, no circles between modules or between the package's folders."""
import ast

import pytest
from conftest import REPO

MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_SCRIPTS = 600, 60, 14
PACKAGE = REPO / "masktk"
SCRIPTS = {p.stem: p for p in sorted(REPO.glob("*.py"))}
LIBRARY = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted(PACKAGE.rglob("*.py"))}
EVERY = {**SCRIPTS, **LIBRARY}
# the commands a user runs (README): the only .py files the repository root may hold
ENTRY_POINTS = {"train", "inference", "evaluation", "face_image", "dataset", "model", "loss", "optimizer", "predict",
                "serve", "export", "synthetic", "benchmark", "finetune_detector"}


def imports_of(path):
    """The project's modules a file imports, at any depth (function-level imports count too): script names for
    scripts, dotted names for the package's modules (`from masktk.x import y` is masktk.x.y where y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(EVERY)
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: relative import; write masktk.<...> in full")
    return {m for m in found if m in EVERY} - {path_name(path)}


def path_name(path):
    return next(name for name, p in EVERY.items() if p == path)


def group_of(name):
    """A module's folder in the package (masktk.data, masktk.faces, ...); a module at the package's root or a
    script stands for itself."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else name


def find_circle(graph):
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return None
        if state.get(m) == "open":
            return path[path.index(m):] + [m]
        state[m] = "open"
        for dep in sorted(graph.get(m, ())):
            circle = visit(dep, path + [m])
            if circle:
                return circle
        state[m] = "done"
        return None
    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


GRAPH = {name: imports_of(p) for name, p in EVERY.items()}


def test_the_root_holds_only_scripts():
    assert set(SCRIPTS) == ENTRY_POINTS and len(SCRIPTS) <= MAX_SCRIPTS, sorted(set(SCRIPTS) ^ ENTRY_POINTS)
    for name, p in SCRIPTS.items():  # each one runs: a main called under __name__ == "__main__"
        assert 'if __name__ == "__main__":' in p.read_text(), f"{name}.py is not a script"


def test_no_module_over_the_line_limit():
    long = {name: n for name, p in EVERY.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_over_the_line_limit():
    long = []
    for name, p in EVERY.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n}")
    assert not long, long


def test_modules_import_no_circle():
    circle = find_circle(GRAPH)
    assert not circle, " -> ".join(circle)


def test_the_package_folders_import_no_circle():
    groups = {}
    for name, deps in GRAPH.items():
        groups.setdefault(group_of(name), set()).update(group_of(d) for d in deps if group_of(d) != group_of(name))
    circle = find_circle(groups)
    assert not circle, " -> ".join(circle)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_the_package_imports_no_script(name):
    up = {m for m in GRAPH[name] if m in SCRIPTS}
    assert not up, f"{name} imports the script(s) {up}: move what it needs into the package"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_import_no_script(name):
    up = {m for m in GRAPH[name] if m in SCRIPTS}
    assert not up, f"{name}.py imports the script(s) {up}: what two scripts share belongs in masktk/"


def test_every_module_says_what_it_is_for():
    silent = [name for name, p in EVERY.items() if p.name != "__init__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, silent


def test_labels_come_from_labels_only():
    names = {"TASKS", "YEARS", "decode", "encode", "MASK_NAMES"}
    for name, p in EVERY.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & names:
                assert node.module == "masktk.labels", f"{name} imports labels from {node.module}"


@pytest.mark.e2e
def test_the_package_installs_and_imports_from_elsewhere(tmp_path):
    """pyproject.toml builds a wheel holding every module and the label fixes; installed apart from the checkout,
    `from masktk import Predictor` works from another folder and finds its data."""
    import shutil
    import subprocess
    import sys
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "masktk", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md", "requirements.txt", "requirements-test.txt"):
        shutil.copy(REPO / f, src / f)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", src], check=True)
    wheel = next((tmp_path / "wheel").glob("masktk-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    code = ("import masktk, masktk.data.table as t; from masktk import Predictor\n"
            "print(masktk.__file__); assert t.DEFAULT_FIXES.is_file(), t.DEFAULT_FIXES\n"
            "import pkgutil; print(sorted(m.name for m in pkgutil.walk_packages(masktk.__path__, 'masktk.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site")), out[0]  # the installed copy, not the checkout
    assert eval(out[1]) == sorted(n for n in LIBRARY if n != "masktk"), out[1]


def test_the_design_map_lists_every_module():
    text = (REPO / "docs" / "design.md").read_text()
    modules = [p for p in LIBRARY.values() if p.name != "__init__.py" or p.parent == PACKAGE]
    missing = [str(p.relative_to(REPO)) for p in modules if f"`{p.relative_to(REPO)}`" not in text]
    assert not missing, f"docs/design.md's 'Where things live' lacks {missing}"
