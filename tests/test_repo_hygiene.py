"""The repository's own bookkeeping: dvc.yaml lists the code each stage runs, and tests
leave the work tree's outputs alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, output_state

PACKAGES = ("pipeline", "stages")


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The file of a module of ours (``pipeline.io`` → pipeline/io.py), None for a library."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def has_code(init: Path) -> bool:
    """An ``__init__.py`` that imports or defines something (not just a docstring and a
    version string): editing it changes what the stage runs."""
    tree = ast.parse(init.read_text())
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)
    return any(isinstance(node, kinds) for node in tree.body)


def is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: its imports are for type checkers and never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def running_nodes(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (their ``else`` runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (lazy imports run too),
    with ``from package import module`` resolved to the module when it is one. Imports under
    ``if TYPE_CHECKING:`` never run and are left out."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = set()
    for node in running_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_closure(module: str, root: Path = REPO) -> set[Path]:
    """The files of ours that running ``python -m module`` executes: its imports, theirs,
    and the packages' ``__init__.py`` on the way (when they hold code)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            path = module_file(".".join(parts[:depth]), root)
            if path is None or path in seen:
                continue
            if path.name == "__init__.py" and not has_code(path) and depth < len(parts):
                continue
            seen.add(path)
            todo.extend(imported_modules(path, root))
    return {p for p in seen if p.name != "__init__.py" or has_code(p)}


def stage_modules(cmd: str | list[str]) -> list[str]:
    """The modules a stage's cmd runs: ``python -m stages.x`` or ``python stages/x.py``."""
    commands = cmd if isinstance(cmd, list) else [cmd]
    modules = []
    for command in commands:
        modules += re.findall(r"-m\s+((?:pipeline|stages)(?:\.\w+)+)", command)
        scripts = re.findall(r"((?:pipeline|stages)/[\w/]+\.py)", command)
        modules += [script[:-3].replace("/", ".") for script in scripts]
    return modules


def missing_deps(dvc_yaml: dict, root: Path = REPO) -> dict[str, list[str]]:
    """Per stage, the files of its import closure that none of its deps covers (a dep may be
    a folder: it covers everything under it)."""
    missing = {}
    for name, stage in dvc_yaml["stages"].items():
        deps = [Path(d if isinstance(d, str) else next(iter(d))) for d in stage.get("deps", [])]
        modules = stage_modules(stage.get("cmd", ""))
        files = set().union(*(import_closure(m, root) for m in modules)) if modules else set()
        uncovered = sorted(
            str(rel)
            for rel in (f.relative_to(root) for f in files)
            if not any(rel == dep or dep in rel.parents for dep in deps)
        )
        if uncovered:
            missing[name] = uncovered
    return missing


def test_every_stage_lists_the_code_it_imports():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert missing_deps(dvc_yaml) == {}, "add these files to the stage's deps in dvc.yaml"


def test_import_closure_follows_lazy_and_package_imports(tmp_path):
    """The checker itself: a fake stage whose function imports a module lazily, through a
    package whose ``__init__`` imports another, with one dep missing; an import only type
    checkers see is left out, its ``else`` kept."""
    for rel, text in {
        "stages/__init__.py": '"""docstring only"""\n',
        "stages/one.py": "import os\n\ndef main():\n    from pipeline.sub import leaf\n",
        "pipeline/__init__.py": '__version__ = "1"\n',
        "pipeline/sub/__init__.py": "from pipeline import helper\n",
        "pipeline/sub/leaf.py": "from . import other\n",
        "pipeline/sub/other.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pipeline import unused\n"
            "else:\n    from pipeline import fallback\n"
        ),
        "pipeline/helper.py": "",
        "pipeline/fallback.py": "",
        "pipeline/unused.py": "",
    }.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    closure = {str(p.relative_to(tmp_path)) for p in import_closure("stages.one", tmp_path)}
    assert closure == {
        "stages/one.py",
        "pipeline/sub/__init__.py",
        "pipeline/sub/leaf.py",
        "pipeline/sub/other.py",
        "pipeline/helper.py",
        "pipeline/fallback.py",
    }
    stage = {"cmd": "python -m stages.one --x", "deps": ["stages/one.py", "pipeline/sub"]}
    assert missing_deps({"stages": {"one": stage}}, tmp_path) == {
        "one": ["pipeline/fallback.py", "pipeline/helper.py"]
    }


def test_output_guard_sees_new_changed_and_removed_files(tmp_path):
    (tmp_path / "dvclive").mkdir()
    (tmp_path / "dvclive/metrics.json").write_text("{}")
    before = output_state(tmp_path)
    assert list(before) == ["dvclive/metrics.json"]
    (tmp_path / "dvclive/metrics.json").write_text('{"step": 2}')
    (tmp_path / "data/train").mkdir(parents=True)
    (tmp_path / "data/train/latest.pt").write_bytes(b"x")
    after = output_state(tmp_path)
    assert set(after) == {"dvclive/metrics.json", "data/train/latest.pt"}
    assert after["dvclive/metrics.json"] != before["dvclive/metrics.json"]
    (tmp_path / "dvclive/metrics.json").unlink()
    assert "dvclive/metrics.json" not in output_state(tmp_path)


@pytest.mark.parametrize("cmd", ["python -m stages.train", ["python stages/train.py"]])
def test_stage_modules_reads_the_cmd(cmd):
    assert stage_modules(cmd) == ["stages.train"]
