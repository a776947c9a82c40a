"""The design card holds: layers point one way, nothing forces a matplotlib backend, the README's layout is the tree."""
import ast
import os
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPTS = {"train", "predict", "siamese", "eval_oneshot", "bench"}
PROJECT = SCRIPTS | {"nets", "utils", "tools"}
STDLIB = set(sys.stdlib_module_names)


def python_files(folder):
    return sorted(p for p in (ROOT / folder).glob("*.py"))


def imported_roots(path):
    """Top-level names of every module `path` imports, at module level or inside functions; 'pkg.mod' for ours."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            root = module.split(".")[0]
            names.add(module if root in PROJECT and root not in SCRIPTS else root)
    return names


@pytest.mark.parametrize("path", python_files("nets"), ids=lambda p: p.name)
def test_nets_import_only_torch_and_torchvision(path):
    outside = {n for n in imported_roots(path) if n not in STDLIB and n.split(".")[0] not in ("torch", "torchvision")
               and not n.startswith("nets")}
    assert outside == set(), f"{path.name} imports {outside}"


@pytest.mark.parametrize("path", python_files("utils"), ids=lambda p: p.name)
def test_utils_never_import_scripts_or_tools(path):
    upward = {n for n in imported_roots(path) if n in SCRIPTS or n.startswith("tools")}
    assert upward == set(), f"{path.name} imports {upward}"


def test_error_types_live_in_a_leaf_module():
    assert imported_roots(ROOT / "utils" / "errors.py") == set()
    for path in python_files("utils") + python_files("tools") + [ROOT / f"{s}.py" for s in SCRIPTS]:
        source = path.read_text()
        for error in ("DataError", "ImageError", "WeightsError", "NonFiniteLoss"):
            assert f"class {error}" not in source or path.name == "errors.py", f"{error} defined in {path.name}"


def test_importing_any_entry_point_leaves_matplotlib_alone():
    code = ("import sys, matplotlib; import siamese, train, predict, eval_oneshot, bench, tools.demo, tools.datasets; "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    env = dict(os.environ, MPLBACKEND="TkAgg")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["TkAgg", "False"]


def test_lines_fit_in_120_characters():
    files = [p for folder in ("", "nets", "utils", "tools", "tests") for p in python_files(folder)]
    long = [f"{p.relative_to(ROOT)}:{n}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 120]
    assert long == []


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    modules = [str(p.relative_to(ROOT)) for folder in ("", "nets", "utils", "tools") for p in python_files(folder)
               if p.name != "__init__.py"]
    assert [m for m in modules if f"`{m}`" not in readme] == []


def test_train_py_functions_each_fit_on_a_screen():
    tree = ast.parse((ROOT / "train.py").read_text())
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []
