"""No import points up a layer.

From the bottom: the foundation; the attribute store and the model (beside each other, so
neither imports the other); the tables; the agents; the application; the simulator, which
drives the application; and the ``nearline`` command on top. A module may import its own
package and any layer below it. Every import counts, also one made inside a function or
only for type checking: each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nearline

LAYERS = {
    "foundation": 0,
    "attribute_store": 1,
    "model": 1,
    "tables": 2,
    "agents": 3,
    "app": 4,
    "simulation": 5,
    "cli": 6,
    "__main__": 7,
}
ROOT = Path(nearline.__file__).parent


def package_of(module: str) -> str | None:
    """The layer's package of a ``nearline.*`` module (``None`` for ``nearline`` itself)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nearline" and len(parts) > 1 else None


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, target) for line, target in found if target.startswith("nearline")]


def modules() -> list[tuple[Path, str]]:
    found = []
    # os.walk, not Path.rglob: nearline/ links to the folders, and rglob does not follow links.
    paths = (Path(d, f) for d, _, fs in os.walk(ROOT, followlinks=True) for f in fs)
    for path in sorted(p for p in paths if p.suffix == ".py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((path, ".".join(("nearline", *parts))))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module) for _, module in modules()} - {None}
    assert packages <= set(LAYERS), f"give these a layer: {sorted(packages - set(LAYERS))}"


def test_no_import_points_up_a_layer() -> None:
    upward = []
    for path, module in modules():
        own = package_of(module)
        for line, target in imports_of(path, module):
            theirs = package_of(target)
            if own is None or theirs is None or theirs == own:
                continue
            if LAYERS[theirs] >= LAYERS[own]:
                upward.append(f"{module}:{line} imports {target}")
    assert not upward, "imports that point up (or sideways) a layer:\n" + "\n".join(upward)


def test_the_walk_sees_the_whole_package() -> None:
    """The check above would pass on nothing: it must see every layer's modules."""
    seen = {package_of(module) for _, module in modules()}
    assert set(LAYERS) - {"cli", "__main__"} <= seen
    assert len(modules()) > 80
