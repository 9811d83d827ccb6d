"""The `haproxy` balancer driver: HAProxy's Runtime API on its stats socket (the configuration it expects
and a process manager live in `starter/haproxy_stack.py`).

Membership lives in *dynamic servers* (`add server` / `del server`) of one backend. What HAProxy 2.6 does,
and how this driver copes:

- a dynamic server starts in maintenance and ignores `default-server`: every option (weight, check,
  inter/rise/fall) is given on `add server`, then `enable health` (when checked) and `set server ... state`;
  it also misses the static servers' defaults `pool-purge-delay 5s` and unlimited `pool-max-conn`:
  without them HAProxy keeps no idle backend connection and opens a new one per request (measured: about
  half the requests/s), so `add server` passes both;
- `del server` needs maintenance first and no connections: removal is `state maint`, `shutdown sessions`,
  then `del server`, retried briefly while HAProxy releases idle connections;
- `cookie` is refused on dynamic servers: sticky sessions use a stick table instead (see
  `starter.haproxy_stack.render_haproxy_config`: the balancer sets a cookie holding a hash of the server name and a stick table
  maps that hash back to the server);
- dynamic servers vanish on reload/restart: `sync_members` compares against what HAProxy really has, so
  after a restart it simply adds everything again.

Server names are `{prefix}-{escaped server_id}` (reversible: `_`, `@`, `/` become `_5f`, `_40`, `_2f`);
servers without the prefix (e.g. static ones from the config) are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import ipaddress
import socket
import string
from collections.abc import Sequence

from poolctl.activities.balancers.base import (
    BalancerDriver,
    BalancerRejectedError,
    BalancerUnavailableError,
    UnknownMemberError,
    connect_failure,
)
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import BalancerStats, Member, MemberState, ServerStats, SyncResult, diff_members

_NAME_SAFE = set(string.ascii_letters + string.digits + "-.:")
_STATE_VERB = {MemberState.IN_ROTATION: "ready", MemberState.DRAINING: "drain", MemberState.OUT: "maint"}
# srv_admin_state bits (server.h): FMAINT 0x01, IMAINT 0x02, CMAINT 0x04, FDRAIN 0x08, IDRAIN 0x10, RMAINT 0x20, HMAINT 0x40
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMIN_DRAIN = 0x08 | 0x10


def encode_server_name(prefix: str, server_id: str) -> str:
    out = []
    for ch in server_id:
        out.append(ch if ch in _NAME_SAFE else f"_{ord(ch):02x}")
    return f"{prefix}-{''.join(out)}"


def decode_server_name(prefix: str, name: str) -> str | None:
    """The server_id of a managed server name, or None for a server this driver does not manage."""
    head = f"{prefix}-"
    if not name.startswith(head):
        return None
    s, out, i = name[len(head) :], [], 0
    while i < len(s):
        if s[i] == "_" and i + 2 < len(s) + 1:
            try:
                out.append(chr(int(s[i + 1 : i + 3], 16)))
            except ValueError:
                return None
            i += 3
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


STICKY_KEY_EXPR = "srv_name,sha2(256),bytes(0,8),hex"
"""The HAProxy sample expression of a server's sticky cookie value (the configuration uses it; see
`sticky_key`, which computes the same value here)."""


def sticky_key(server_name: str) -> str:
    """The sticky cookie value HAProxy gives clients of `server_name` (`STICKY_KEY_EXPR`: the first 8 bytes of
    SHA-256 of the name, upper-case hex): the key of that server's entry in the backend's stick table."""
    return hashlib.sha256(server_name.encode()).digest()[:8].hex().upper()


def effective_weight(algorithm: str, weight: int) -> int:
    """What HAProxy is given: the weight for `weighted`/`least_connections`; 1 (or 0) for round robin and
    IP hash, whose built-in counterparts ignore weights other than 0."""
    if algorithm in ("round_robin", "ip_hash"):
        return 1 if weight > 0 else 0
    return weight


# --- the Runtime API --------------------------------------------------------------------------------------


class HAProxyRuntime:
    """One Runtime API command per connection (non-interactive mode) on a unix or TCP stats socket."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.timeout_s = timeout_s

    def _is_tcp(self) -> bool:
        return not self.address.startswith("/") and ":" in self.address

    async def command(self, cmd: str) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._is_tcp():
                    host, _, port = self.address.rpartition(":")
                    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                else:
                    reader, writer = await asyncio.open_unix_connection(self.address)
                try:
                    writer.write(cmd.encode() + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            why = connect_failure(e)
            raise BalancerUnavailableError(
                f"HAProxy Runtime API at {self.address} unreachable: {why}", address=self.address, reason=why
            ) from e
        return data.decode(errors="replace")

    async def show_servers_state(self, backend: str) -> list[dict[str, str]]:
        text = await self.command(f"show servers state {backend}")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines and not lines[0].lstrip().isdigit() and not lines[0].startswith("#"):
            raise BalancerRejectedError(f"show servers state {backend}: {text.strip()}")
        header: list[str] = []
        rows = []
        for ln in lines:
            if ln.startswith("#"):
                header = ln[1:].split()
            elif header and not ln.strip().isdigit():
                rows.append(dict(zip(header, ln.split(), strict=False)))
        return rows

    async def show_stat(self) -> list[dict[str, str]]:
        text = await self.command("show stat")
        if not text.startswith("# "):
            raise BalancerRejectedError(f"show stat: {text.strip()}")
        return parse_stat_csv(text)


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """`show stat` CSV (header line `# pxname,svname,...`) as one dict per proxy/server row."""
    body = text[2:] if text.startswith("# ") else text
    return [row for row in csv.DictReader(io.StringIO(body)) if row.get("pxname")]


def _check_reply(cmd: str, reply: str, ok: tuple[str, ...] = ()) -> None:
    text = reply.strip()
    if not text or any(text.startswith(o) for o in ok):
        return
    if "No such server" in text or "No such backend" in text:
        raise UnknownMemberError(f"{cmd}: {text}")
    raise BalancerRejectedError(f"HAProxy refused `{cmd}`: {text}")


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


# --- the driver ---------------------------------------------------------------------------------------------


class HAProxyDriver(BalancerDriver):
    """Keeps one HAProxy backend's dynamic servers in line with the desired members (Runtime API)."""

    driver_name = "haproxy"

    def __init__(
        self,
        socket_address: str,
        backend: str,
        *,
        algorithm: str = "round_robin",
        prefix: str = "srv",
        health_check: tuple[float, int, int] | None = None,
        slow_start_s: float = 0.0,
        move_sticky_on_drain: bool = False,
        name: str = "",
        timeout_s: float = 5.0,
        delete_wait_s: float = 5.0,
    ) -> None:
        self.runtime = HAProxyRuntime(socket_address, timeout_s)
        self.backend = backend
        self.algorithm = algorithm
        self.prefix = prefix
        self.health_check = health_check  # (interval_s, rise, fall) or None
        self.slow_start_s = slow_start_s  # HAProxy `slowstart` of every server added
        # drain_sticky: move (with sticky sessions): a draining server's stick-table entry is flagged (gpc0 = 1)
        # and the configuration skips `stick match` for flagged entries, so its sticky clients are re-balanced
        self.move_sticky_on_drain = move_sticky_on_drain
        self.name = name or backend
        self.delete_wait_s = delete_wait_s

    @classmethod
    def from_spec(cls, spec: LoadBalancerSpec, socket_address: str | None = None) -> HAProxyDriver:
        opts = spec.haproxy
        return cls(
            socket_address or (opts.stats_socket if opts else "/run/haproxy/admin.sock"),
            spec.haproxy_backend,
            algorithm=spec.algorithm,
            prefix=opts.server_template_prefix if opts else "srv",
            health_check=(spec.health_check_interval, spec.healthy_threshold, spec.unhealthy_threshold)
            if spec.health_check_enabled
            else None,
            slow_start_s=spec.slow_start_s,
            move_sticky_on_drain=spec.sticky_sessions and spec.drain_sticky == "move",
            name=spec.name,
        )

    def _ref(self, server_id: str) -> str:
        return f"{self.backend}/{encode_server_name(self.prefix, server_id)}"

    async def _cmd(self, cmd: str, ok: tuple[str, ...] = ()) -> str:
        reply = await self.runtime.command(cmd)
        _check_reply(cmd, reply, ok)
        return reply

    # --- reading ------------------------------------------------------------------------------------------

    async def _server_rows(self) -> dict[str, dict[str, str]]:
        """Managed servers of the backend, by server_id, from `show servers state`."""
        rows = await self.runtime.show_servers_state(self.backend)
        out = {}
        for r in rows:
            if r.get("be_name") != self.backend:
                continue
            sid = decode_server_name(self.prefix, r.get("srv_name", ""))
            if sid is not None:
                out[sid] = r
        return out

    async def _stat_rows(self) -> tuple[dict[str, dict[str, str]], dict[str, str] | None]:
        """`show stat` rows of the managed servers by server_id, and the BACKEND row."""
        servers: dict[str, dict[str, str]] = {}
        backend_row = None
        for r in await self.runtime.show_stat():
            if r["pxname"] != self.backend:
                continue
            if r["svname"] == "BACKEND":
                backend_row = r
                continue
            sid = decode_server_name(self.prefix, r["svname"])
            if sid is not None:
                servers[sid] = r
        return servers, backend_row

    @staticmethod
    def _state_of(row: dict[str, str]) -> MemberState:
        admin = _int(row.get("srv_admin_state"))
        if admin & _ADMIN_MAINT:
            return MemberState.OUT
        if admin & _ADMIN_DRAIN:
            return MemberState.DRAINING
        return MemberState.IN_ROTATION

    async def members(self) -> list[Member]:
        rows = await self._server_rows()
        stats, _ = await self._stat_rows() if rows else ({}, None)
        out = []
        for sid, r in sorted(rows.items()):
            addr = r.get("srv_addr", "")
            host = f"[{addr}]" if ":" in addr else addr
            out.append(
                Member(
                    server_id=sid,
                    address=f"{host}:{r.get('srv_port', '0')}",
                    weight=_int(r.get("srv_uweight")),
                    state=self._state_of(r),
                    active_connections=_int(stats.get(sid, {}).get("scur")),
                )
            )
        return out

    # --- writing ------------------------------------------------------------------------------------------

    async def _resolve(self, m: Member) -> Member:
        """HAProxy's dynamic servers take IP addresses (no resolvers here): resolve host names once."""
        try:
            ipaddress.ip_address(m.host)
            return m.model_copy(update={"weight": effective_weight(self.algorithm, m.weight)})
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
        ip = str(infos[0][4][0])
        host = f"[{ip}]" if ":" in ip else ip
        return m.model_copy(
            update={"address": f"{host}:{m.port}", "weight": effective_weight(self.algorithm, m.weight)}
        )

    async def sync_members(self, desired: Sequence[Member]) -> SyncResult:
        ids = [m.server_id for m in desired]
        if len(set(ids)) != len(ids):
            raise BalancerRejectedError("a server_id appears twice in the desired member list")
        want = {m.server_id: await self._resolve(m) for m in desired}
        current = {m.server_id: m for m in await self.members()}
        plan = diff_members(current.values(), want.values())
        for sid in plan.removed:
            await self._delete(sid)
        for sid in plan.added:
            await self._add(want[sid])
        for sid in plan.updated:
            cur, new = current[sid], want[sid]
            ref = self._ref(sid)
            if cur.address != new.address:
                await self._cmd(
                    f"set server {ref} addr {new.host} port {new.port}", ok=("IP changed", "no need")
                )
            if cur.weight != new.weight:
                await self._cmd(f"set server {ref} weight {new.weight}")
            if cur.state != new.state:
                await self._set_state(sid, new.state)
        return plan

    async def _set_state(self, server_id: str, state: MemberState) -> None:
        """`set server ... state`, flagging the server's sticky entry first when it starts draining and
        clearing the flag otherwise (drain_sticky: move; see `move_sticky_on_drain`)."""
        if self.move_sticky_on_drain:
            key = sticky_key(encode_server_name(self.prefix, server_id))
            flag = 1 if state is MemberState.DRAINING else 0
            await self._cmd(f"set table {self.backend} key {key} data.gpc0 {flag}")
        await self._cmd(f"set server {self._ref(server_id)} state {_STATE_VERB[state]}")

    async def _add(self, m: Member) -> None:
        ref = self._ref(m.server_id)
        args = [
            f"add server {ref} {m.address}",
            f"weight {m.weight}",
            "pool-purge-delay 5s pool-max-conn 1000",
        ]
        if self.health_check is not None:
            inter, rise, fall = self.health_check
            args.append(f"check inter {max(int(inter * 1000), 100)} rise {rise} fall {fall}")
        if self.slow_start_s > 0:
            args.append(f"slowstart {max(round(self.slow_start_s * 1000), 1)}")
        try:
            await self._cmd(" ".join(args), ok=("New server registered",))
        except BalancerRejectedError as e:
            if "Already exists" not in str(e) and "already exists" not in str(e):
                raise
        if self.health_check is not None:
            await self._cmd(f"enable health {ref}")
        # dynamic servers start in maintenance: put it in its desired state (leaving maintenance starts the
        # slow start ramp, as a server back from a failed check does)
        await self._set_state(m.server_id, m.state)

    async def _delete(self, server_id: str) -> None:
        ref = self._ref(server_id)
        await self._cmd(f"set server {ref} state maint")
        await self._cmd(f"shutdown sessions server {ref}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delete_wait_s
        while True:
            reply = (await self.runtime.command(f"del server {ref}")).strip()
            if not reply or reply.startswith("Server deleted") or "No such server" in reply:
                if self.move_sticky_on_drain:  # a later server of the same name starts unflagged
                    key = sticky_key(encode_server_name(self.prefix, server_id))
                    await self._cmd(f"set table {self.backend} key {key} data.gpc0 0")
                return
            if loop.time() >= deadline:
                raise BalancerUnavailableError(f"HAProxy kept {ref}: {reply} (retry later)")
            await asyncio.sleep(0.1)

    async def drain(self, server_id: str) -> None:
        if server_id not in await self._server_rows():
            raise UnknownMemberError(f"server {server_id!r} is not a member of backend {self.backend}")
        await self._set_state(server_id, MemberState.DRAINING)

    async def active_connections(self, server_id: str) -> int:
        stats, _ = await self._stat_rows()
        return _int(stats.get(server_id, {}).get("scur"))

    async def stats(self) -> BalancerStats:
        rows = await self._server_rows()
        stats, backend_row = await self._stat_rows()
        servers = []
        for sid in sorted(set(rows) | set(stats)):
            st = stats.get(sid, {})
            r = rows.get(sid)
            answered = sum(_int(st.get(f"hrsp_{c}")) for c in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
            rtime_ms = st.get("rtime")
            servers.append(
                ServerStats(
                    server_id=sid,
                    address=f"{r.get('srv_addr')}:{r.get('srv_port')}" if r else st.get("addr", ""),
                    state=self._state_of(r).value if r else "removed",
                    weight=_int(r.get("srv_uweight")) if r else 0,
                    requests=_int(st.get("stot")),
                    responses_2xx=_int(st.get("hrsp_2xx")) + _int(st.get("hrsp_1xx")),
                    responses_3xx=_int(st.get("hrsp_3xx")),
                    responses_4xx=_int(st.get("hrsp_4xx")),
                    responses_5xx=_int(st.get("hrsp_5xx")),
                    upstream_errors=_int(st.get("eresp")) + _int(st.get("econ")),
                    active_connections=_int(st.get("scur")),
                    latency_mean_s=_int(rtime_ms) / 1000.0
                    if answered and rtime_ms not in (None, "")
                    else None,
                )
            )
        served_5xx = sum(s.responses_5xx for s in servers)
        no_member = max(_int((backend_row or {}).get("hrsp_5xx")) - served_5xx, 0)
        return BalancerStats(
            balancer=self.name,
            driver="haproxy",
            algorithm=self.algorithm,
            requests=sum(s.requests for s in servers) + no_member,
            no_member_responses=no_member,
            servers=servers,
        )


__all__ = [
    "STICKY_KEY_EXPR",
    "HAProxyDriver",
    "HAProxyRuntime",
    "decode_server_name",
    "effective_weight",
    "encode_server_name",
    "parse_stat_csv",
    "sticky_key",
]
