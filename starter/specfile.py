"""Reading spec files: YAML in, validated SpecDocuments out, or a SpecError naming file, field and problem.

Everything a command applies is checked here before any Temporal call or store write: each file alone
(YAML limits in spec_yaml, the pydantic models), then all files together and against the pools already in
the store (domain/conflicts.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from poolctl.domain.conflicts import PlacedPool, spec_conflicts
from poolctl.domain.errors import SpecError
from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.starter.spec_yaml import MAX_FILE_BYTES, SpecYamlError, decode_spec_bytes, load_yaml_documents


def _location(loc: tuple[Any, ...], raw: Any) -> str:
    """`pools[0].min_servers` -> `pools[0] (demo-web).min_servers`: name the pool, not only its index."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" ({node['name']})"
            else:
                node = None
            if parts:
                parts[-1] += label
            else:
                parts.append(label)
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "required field is missing"
    kind = str(err.get("type", ""))
    given = err.get("input")
    if kind.endswith(("_type", "_parsing")) and isinstance(given, bool | str | int | float):
        shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
        return f"{msg}, got {shown}"
    return msg


def _yaml_problem(e: yaml.YAMLError) -> tuple[str, str]:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return where, f"malformed YAML: {problem}"


def parse_spec(text: str, source: str) -> SpecDocument:
    """One file's text (all its documents) as one SpecDocument. Raises SpecError."""
    try:
        docs = [d for d in load_yaml_documents(text) if d is not None]
    except SpecYamlError as e:
        raise SpecError(source, [(f"line {e.line}" if e.line else "", str(e))]) from None
    except yaml.YAMLError as e:
        raise SpecError(source, [_yaml_problem(e)]) from None
    except RecursionError:  # a guard behind MAX_DEPTH: never a traceback
        raise SpecError(source, [("", "the YAML is nested too deeply")]) from None
    if not docs:
        raise SpecError(source, [("", "the file holds no spec")])
    merged: dict[str, Any] = {"pools": []}
    for doc in docs:
        if not isinstance(doc, dict):
            raise SpecError(source, [("", f"a spec document must be a mapping, not {type(doc).__name__}")])
        if "team" in doc:
            if "team" in merged and merged["team"] != doc["team"]:
                raise SpecError(source, [("team", "documents in one file name different teams")])
            merged["team"] = doc["team"]
        extra = [str(k) for k in doc if k not in ("team", "pools", "webhooks")]
        if extra:
            raise SpecError(source, [(k, "unknown field") for k in sorted(extra)])
        if "webhooks" in doc:  # team-wide receivers: the documents' lists join
            hooks = doc["webhooks"]
            if not isinstance(hooks, list):
                raise SpecError(source, [("webhooks", "must be a list of webhooks")])
            merged.setdefault("webhooks", []).extend(hooks)
        pools = doc.get("pools", [])
        if not isinstance(pools, list):
            raise SpecError(source, [("pools", "must be a list of pools")])
        merged["pools"].extend(pools)
    try:
        return SpecDocument.model_validate(merged)
    except ValidationError as e:
        problems = [(_location(tuple(err["loc"]), merged), _message(dict(err))) for err in e.errors()]
        raise SpecError(source, problems) from None


def read_spec_file(path: Path) -> SpecDocument:
    """Read and validate one file (size, encoding, YAML, models). Raises SpecError."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError(str(path), [("", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = decode_spec_bytes(data)
    except SpecYamlError as e:
        raise SpecError(str(path), [(f"line {e.line}" if e.line else "", str(e))]) from None
    return parse_spec(text, str(path))


def load_spec_files(paths: list[Path], stored: list[PlacedPool] | None = None) -> list[SpecDocument]:
    """Validate every file, then all of them together and against `stored` (pools already applied, see
    `stored_pools`), before anything is applied (apply is all-or-nothing). Raises SpecError."""
    read: list[tuple[Path, SpecDocument]] = []
    problems: list[SpecError] = []
    for path in paths:
        try:
            read.append((path, read_spec_file(path)))
        except SpecError as e:
            problems.append(e)
    placed = [
        PlacedPool(str(path), doc.team, spec, i) for path, doc in read for i, spec in enumerate(doc.pools)
    ]
    applied = {(p.team, p.spec.name) for p in placed}
    others = [p for p in stored or [] if (p.team, p.spec.name) not in applied]
    problems += [SpecError(source, [(loc, msg)]) for source, loc, msg in spec_conflicts(others + placed)]
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SpecError("", [pr for p in problems for pr in _prefixed(p)])
    return [doc for _, doc in read]


def stored_pools(database_url: str) -> list[PlacedPool]:
    """The pools already in the store (the read model), to check a new spec against. Reads only: a store
    that does not exist yet (or has no schema) has no pools; a stored spec that no longer validates is
    skipped."""
    from sqlalchemy.exc import SQLAlchemyError

    from poolctl.store import queries as inventory
    from poolctl.store.db import session_scope

    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if not path or path == ":memory:" or not Path(path).exists():
            return []
    out: list[PlacedPool] = []
    try:
        with session_scope(database_url, migrate_first=False) as s:
            rows = [(r.team.name, r.spec) for r in inventory.list_pools(s)]
    except SQLAlchemyError:
        return []
    for team, raw in rows:
        try:
            out.append(PlacedPool("already applied", team, PoolSpec.model_validate(raw)))
        except ValidationError:
            continue
    return out


def _prefixed(err: SpecError) -> list[tuple[str, str]]:
    return [(f"{err.source}: {loc}" if loc else err.source, msg) for loc, msg in err.problems]
