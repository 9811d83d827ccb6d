"""http_json source: a number at a dotted path in a JSON document fetched by GET."""

from __future__ import annotations

import math
from typing import Any

import httpx

from poolctl.activities.metrics.errors import MetricUnavailableError, get_ok


def value_at_path(doc: Any, path: str) -> float:
    """Walk `path` (`data.value`, `items.0.load`; digits index lists) and return the number found."""
    node = doc
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(".".join(walked))
    if isinstance(node, bool) or not isinstance(node, int | float | str):
        raise TypeError(f"value at {path!r} is {type(node).__name__}, not a number")
    value = float(node)
    if not math.isfinite(value):
        raise ValueError(f"value at {path!r} is {value}")
    return value


async def read_http_json(url: str, path: str, client: httpx.AsyncClient, *, timeout_s: float = 5.0) -> float:
    label = f"http_json {url} {path}"
    resp = await get_ok(client, url, label, timeout_s)
    try:
        return value_at_path(resp.json(), path)
    except KeyError as e:
        raise MetricUnavailableError(label, f"no key at {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise MetricUnavailableError(label, str(e)) from e
