"""The package's shape: a folder per layer, imports pointing down, small modules and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import vaecli

PACKAGE = Path(vaecli.__file__).parent

# Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS = (
    ("errors", "atomic", "registry"),
    ("config",),
    ("data",),
    ("models",),
    ("objectives",),
    ("runfolder",),
    ("measure",),
    ("inspect",),
    ("run",),
    ("sweep",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
SHARED_TOP = {"__init__.py", "__main__.py", "errors.py", "atomic.py", "registry.py"}


def layer_of(module: str) -> str | None:
    """``vaecli.run.loop`` -> ``run``; ``vaecli`` itself (the API facade) has no layer."""
    parts = module.split(".")
    return parts[1] if parts[0] == "vaecli" and len(parts) > 1 else None  # vaecli.errors -> "errors"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``vaecli`` module a file imports, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaecli"):
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("vaecli"))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer_folder():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in SHARED_TOP)
    assert loose == []
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(folders) <= set(RANK), f"a folder that is no layer: {set(folders) - set(RANK)}"


def test_imports_point_down():
    wrong = []
    for path in sources():
        here = layer_of(module_name(path))
        if here not in RANK:  # vaecli/__init__.py (the notebook API, lazy) and __main__.py sit above every layer
            continue
        for line, target in imported_modules(path):
            there = layer_of(target)
            if there in RANK and RANK[there] > RANK[here]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} ({there} is above {here})")
    assert wrong == []


def test_nothing_but_main_imports_the_command_line():
    importers = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sources()
        if layer_of(module_name(path)) != "cli" and path.name != "__main__.py"
        for line, target in imported_modules(path)
        if layer_of(target) == "cli"
    ]
    assert importers == []


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sources():
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_every_package_folder_ships_in_the_wheel():
    """pyproject.toml lists packages by name: a new layer folder left out would be missing from `pip install .`."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()
