"""The shape of the code: who may import what, checked by reading the source.

These tests parse files with ``ast`` and never import jax or the package, so
they run in well under a second. Each one names the files and lines that break
the rule it checks.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lip_jax"


def _private(name: str) -> bool:
    """A name meant for its own module only: ``_x``, not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ``from ... import`` reads, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _lip_imports(path: Path):
    """Yield ``(line, module, names)`` for each import of a lip_jax module in
    ``path``; ``names`` is the imported names for ``from`` imports, else ()."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lip_jax":
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if module.split(".")[0] == "lip_jax":
                yield node.lineno, module, tuple(a.name for a in node.names)


def _private_module(module: str) -> bool:
    return any(_private(part) for part in module.split("."))


def _outside_files() -> list[Path]:
    return sorted([*ROOT.glob("configs/*.py"), *ROOT.glob("tools/*.py")])


def _module_aliases(tree: ast.AST, path: Path) -> dict[str, str]:
    """Local names bound to lip_jax modules (``import lip_jax.x as X``,
    ``from lip_jax import x``, ``from lip_jax.x import y`` where y is a module)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lip_jax":
                    # ``import lip_jax.x`` binds ``lip_jax``; ``as X`` binds the module.
                    local = alias.asname or alias.name.split(".")[0]
                    aliases[local] = alias.name if alias.asname else "lip_jax"
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if module.split(".")[0] != "lip_jax":
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                target = PACKAGE.parent / Path(*full.split("."))
                if target.with_suffix(".py").is_file() or (target / "__init__.py").is_file():
                    aliases[alias.asname or alias.name] = full
    return aliases


def test_configs_and_tools_use_only_the_public_api():
    """configs/ and tools/ are users of the package: they import no ``_name``,
    reach no ``module._name`` and import no ``_module`` of lip_jax."""
    found = []
    for path in _outside_files():
        rel = path.relative_to(ROOT)
        for line, module, names in _lip_imports(path):
            if _private_module(module):
                found.append(f"{rel}:{line}: imports private module {module}")
            for name in names:
                if _private(name):
                    found.append(f"{rel}:{line}: imports {name} from {module}")
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = _module_aliases(tree, path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            # Follow ``a.b.c._x`` down to the name ``a``.
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(
                    f"{rel}:{node.lineno}: reaches {node.attr} through "
                    f"{base.id} ({aliases[base.id]})"
                )
    assert not found, "private lip_jax names used outside the package:\n" + "\n".join(found)


def _top(module: str) -> str:
    """``lip_jax.app.pipeline`` -> ``lip_jax.app``."""
    return ".".join(module.split(".")[:2])


# Crossings waiting on a change elsewhere; each must still occur (so a fixed one
# is struck from here) and is named as ``path: module name``.
KNOWN_CROSSINGS: set[str] = set()


def test_no_private_name_crosses_a_top_level_package():
    """Inside lip_jax a ``_name`` may be imported only from the same top-level
    subpackage: what another package needs is part of its public face."""
    found, known = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _top(_module_name(path))
        rel = path.relative_to(ROOT)
        for line, module, names in _lip_imports(path):
            if _top(module) == here:
                continue
            for name in names or ("",):
                if not (_private_module(module) or _private(name)):
                    continue
                key = f"{rel.as_posix()}: {module} {name}".rstrip()
                if key in KNOWN_CROSSINGS:
                    known.add(key)
                else:
                    found.append(f"{rel}:{line}: imports {name or module} from {module}")
    assert not found, "private names imported across packages:\n" + "\n".join(found)
    assert known == KNOWN_CROSSINGS, f"no longer imported, strike from KNOWN_CROSSINGS: {KNOWN_CROSSINGS - known}"


def _layered_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = [c for c in contracts if c["type"] == "layers"]
    assert len(layers) == 1, "expected one layers contract in pyproject.toml"
    return {m.strip() for layer in layers[0]["layers"] for m in layer.split("|")}


def test_every_top_level_module_is_in_a_layer():
    """A new top-level module or package must be given its place in the layers
    contract, or import-linter would not check what it imports."""
    tops = set()
    for entry in PACKAGE.iterdir():
        if entry.is_dir() and (entry / "__init__.py").is_file():
            tops.add(f"lip_jax.{entry.name}")
        elif entry.suffix == ".py" and entry.stem != "__init__":
            tops.add(f"lip_jax.{entry.stem}")
    missing = sorted(tops - _layered_modules())
    assert not missing, "not placed in the layers contract of pyproject.toml: " + ", ".join(missing)
