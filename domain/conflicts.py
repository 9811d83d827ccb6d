"""Conflicts between objects that are each valid alone: pools named twice, and balancers whose listeners
(traffic port, builtin admin port) would take the same address, across every file, document and the store."""

from __future__ import annotations

from dataclasses import dataclass

from poolctl.domain.balancer_spec import addresses_overlap
from poolctl.domain.pool_spec import PoolSpec


@dataclass(frozen=True)
class PlacedPool:
    """A pool spec and where it comes from: a file (`index` is its position there) or the store (`index` None)."""

    source: str
    team: str
    spec: PoolSpec
    index: int | None = None

    def where(self) -> str:
        if self.index is None:
            return f"pool {self.team}/{self.spec.name} ({self.source})"
        return f"pools[{self.index}] ({self.spec.name})"


def spec_conflicts(pools: list[PlacedPool]) -> list[tuple[str, str, str]]:
    """(source, location, message) for each conflict; pools from the store (index None) are only compared
    against, never reported. A balancer clashes with an earlier one when one of its listeners overlaps
    (same port, same address or a wildcard) with any listener of an active balancer seen before it."""
    problems: list[tuple[str, str, str]] = []
    named: dict[tuple[str, str], PlacedPool] = {}
    for p in pools:
        first = named.get((p.team, p.spec.name))
        if first is not None and p.index is not None:
            problems.append(
                (p.source, p.where(), f"pool {p.team}/{p.spec.name} is also defined in {first.source}")
            )
        named.setdefault((p.team, p.spec.name), p)

    taken: list[tuple[tuple[str, int], str]] = []
    ordered = sorted(pools, key=lambda p: p.index is not None)  # the store's listeners first
    for p in ordered:
        for j, lb in enumerate(p.spec.load_balancers):
            if lb.status != "active":
                continue
            mine = lb.listen_addresses()
            for what, addr in mine:
                owner = next((o for a, o in taken if addresses_overlap(a, addr)), None)
                if owner is not None and p.index is not None:
                    problems.append(
                        (
                            p.source,
                            f"{p.where()}.load_balancers[{j}] ({lb.name}).{what}",
                            f"{_show(addr)} is already taken by {owner}",
                        )
                    )
                    break
            label = f"load balancer {lb.name!r} of {p.where()}" + (
                "" if p.index is None else f" in {p.source}"
            )
            taken.extend((addr, f"the {what} of {label}") for what, addr in mine)
    return problems


def _show(addr: tuple[str, int]) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"
