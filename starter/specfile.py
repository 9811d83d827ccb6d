"""Reading spec files: YAML in, a validated SpecDocument out, or a SpecError naming file, field and problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from poolctl.domain.errors import SpecError
from poolctl.domain.pool_spec import SpecDocument


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
    return msg


def parse_spec(text: str, source: str) -> SpecDocument:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [(where, f"malformed YAML: {problem}")]) from e
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
        extra = {k: v for k, v in doc.items() if k not in ("team", "pools")}
        if extra:
            raise SpecError(source, [(k, "unknown field") for k in sorted(extra)])
        pools = doc.get("pools", [])
        if not isinstance(pools, list):
            raise SpecError(source, [("pools", "must be a list of pools")])
        merged["pools"].extend(pools)
    try:
        return SpecDocument.model_validate(merged)
    except ValidationError as e:
        problems = [(_location(tuple(err["loc"]), merged), _message(dict(err))) for err in e.errors()]
        raise SpecError(source, problems) from e


def load_spec_files(paths: list[Path]) -> list[SpecDocument]:
    """Validate every file before anything is applied (apply is all-or-nothing)."""
    docs: list[SpecDocument] = []
    problems: list[SpecError] = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as e:
            problems.append(SpecError(str(path), [("", f"cannot read: {e.strerror or e}")]))
            continue
        try:
            docs.append(parse_spec(text, str(path)))
        except SpecError as e:
            problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SpecError("", [pr for p in problems for pr in _prefixed(p)])
    return docs


def _prefixed(err: SpecError) -> list[tuple[str, str]]:
    return [(f"{err.source}: {loc}" if loc else err.source, msg) for loc, msg in err.problems]
