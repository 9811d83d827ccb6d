"""The CLI is a client: no module under starter/ imports the store's write functions or a provider driver
(issue "One owner per pool"). The store is read through store/queries.py only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from poolctl.store import queries

STARTER = Path(__file__).resolve().parent.parent / "starter"
# store modules the CLI may import: the read model, the session (reads), the schema command, row types
ALLOWED_STORE_MODULES = {"poolctl.store.queries", "poolctl.store.db", "poolctl.store.models"}
ALLOWED_DB_NAMES = {"session_scope", "migrate"}  # migrate: `poolctl db upgrade` (schema, not data)
FORBIDDEN_PREFIXES = ("poolctl.activities.providers", "poolctl.activities.inventory")
WRITE_WORDS = ("record_", "store_", "set_", "apply_", "delete_", "forget_", "mark_", "start_", "finish_")


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import in a file, including those inside functions."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
            out += [(f"{node.module}.{a.name}", None) for a in node.names]
    return out


@pytest.mark.parametrize("path", sorted(STARTER.glob("*.py")), ids=lambda p: p.name)
def test_starter_module_neither_writes_the_store_nor_calls_a_provider(path: Path) -> None:
    for module, name in _imports(path):
        assert not module.startswith(FORBIDDEN_PREFIXES), f"{path.name} imports {module}"
        if module == "poolctl.store" and name is not None:
            assert f"poolctl.store.{name}" in ALLOWED_STORE_MODULES, (
                f"{path.name} imports poolctl.store.{name}"
            )
        elif module.startswith("poolctl.store.") and name is None:
            parent = module.rsplit(".", 1)[0]
            if parent != "poolctl.store":  # `from poolctl.store.X import name`, recorded as X.name
                assert parent in ALLOWED_STORE_MODULES, f"{path.name} imports {module}"
                if parent == "poolctl.store.db":
                    assert module.rsplit(".", 1)[1] in ALLOWED_DB_NAMES, f"{path.name} imports {module}"
            else:
                assert module in ALLOWED_STORE_MODULES, f"{path.name} imports {module}"


def test_the_read_model_exports_no_write_function() -> None:
    writes = [n for n in queries.__all__ if n.startswith(WRITE_WORDS)]
    assert writes == []
