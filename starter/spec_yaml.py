"""The YAML loader for spec files: PyYAML's SafeLoader with YAML 1.2 core scalars and hard limits.

Refused, each with a one-line message: files over 1 MiB, text that is not UTF-8 (UTF-16/32 included),
nesting deeper than 64 levels, documents whose aliases expand to more than 100,000 nodes (the "billion
laughs"), duplicate keys in a mapping, and integers longer than 100 characters (Python cannot even convert
more than 4,300 decimal digits). Scalars follow the YAML 1.2 core schema: only `true`/`false` are booleans
(`yes`, `no`, `on`, `off` stay strings), `010` is ten, `1:30` and `2024-01-01` stay strings, `1e3` is a
number.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000
MAX_INT_DIGITS = 100
"""Longest integer literal read (Python refuses to convert more than 4,300 decimal digits at all)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecYamlError(ValueError):
    """The file cannot be read as a spec's YAML; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(message)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core implicit types, a depth limit and duplicate-key detection."""

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # bounded here too: the scanner looks ahead over every open '[' / '{' (quadratic in the depth)
        if self.flow_level >= MAX_DEPTH:
            raise SpecYamlError(f"nesting is deeper than {MAX_DEPTH} levels", self.get_mark().line + 1)
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecYamlError(f"nesting is deeper than {MAX_DEPTH} levels", mark.line + 1)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            merges = 0
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    merges += 1
                    if merges > 1:  # PyYAML would let the last one win; `<<: [*a, *b]` merges several
                        raise SpecYamlError(
                            "duplicate key '<<' in a mapping (merge several with <<: [*a, *b])",
                            key_node.start_mark.line + 1,
                        )
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: the base class reports it
                if duplicate:
                    raise SpecYamlError(f"duplicate key {key!r} in a mapping", key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:  # type: ignore[override]
        value = str(self.construct_scalar(node))
        if len(value) > MAX_INT_DIGITS:
            raise SpecYamlError(
                f"an integer of {len(value):,} characters; integers may be at most {MAX_INT_DIGITS} characters long",
                node.start_mark.line + 1,
            )
        if value.startswith(("0x", "0o")):
            return int(value[2:], 16 if value[1] == "x" else 8)
        return int(value, 10)


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def decode_spec_bytes(data: bytes) -> str:
    """The text of a spec file: at most 1 MiB of UTF-8 (a UTF-8 byte-order mark is dropped)."""
    if len(data) > MAX_FILE_BYTES:
        raise SpecYamlError(
            f"the file is {len(data):,} bytes; a spec file may be at most {MAX_FILE_BYTES:,} bytes (1 MiB)"
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) >= 2 and (data[0] == 0 or data[1] == 0)):
        raise SpecYamlError("the file is UTF-16 or UTF-32; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecYamlError(
            f"the file is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8", line
        ) from None


def _check_expansion(root: Node) -> None:
    """Count the nodes of `root` with every alias expanded; refuse more than MAX_EXPANDED_NODES.

    Sizes are memoized per node, so a bomb of nested aliases is measured without being expanded."""
    sizes: dict[int, int] = {}

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_EXPANDED_NODES:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > MAX_EXPANDED_NODES:
                    break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_EXPANDED_NODES:
        raise SpecYamlError(
            f"the document expands to more than {MAX_EXPANDED_NODES:,} values once its aliases (*name) are "
            "expanded; aliases may not multiply a spec this much"
        )


def load_yaml_documents(text: str) -> list[Any]:
    """Every document of `text`, constructed with SpecLoader. Raises SpecYamlError or yaml.YAMLError."""
    loader = SpecLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_expansion(node)
            docs.append(loader.construct_document(node))
        return docs
    finally:
        loader.dispose()
