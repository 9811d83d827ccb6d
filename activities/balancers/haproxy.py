"""The `haproxy` balancer driver: HAProxy's Runtime API on its stats socket, plus a config renderer and a
small process manager (tests, dev, bench).

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
  `render_haproxy_config`: the balancer sets a cookie holding a hash of the server name and a stick table
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
import io
import ipaddress
import os
import shutil
import signal
import socket
import string
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from poolctl.activities.balancers.base import (
    BalancerDriver,
    BalancerRejectedError,
    BalancerUnavailableError,
    UnknownMemberError,
)
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import BalancerStats, Member, MemberState, ServerStats, SyncResult, diff_members

HAPROXY_BINARY_CANDIDATES = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")

_NAME_SAFE = set(string.ascii_letters + string.digits + "-.:")
_STATE_VERB = {MemberState.IN_ROTATION: "ready", MemberState.DRAINING: "drain", MemberState.OUT: "maint"}
# srv_admin_state bits (server.h): FMAINT 0x01, IMAINT 0x02, CMAINT 0x04, FDRAIN 0x08, IDRAIN 0x10, RMAINT 0x20, HMAINT 0x40
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMIN_DRAIN = 0x08 | 0x10
_ALGORITHMS = {
    "round_robin": "roundrobin",
    "weighted": "roundrobin",
    "least_connections": "leastconn",
    "ip_hash": "source",
}


def haproxy_binary() -> str | None:
    """The HAProxy executable (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    for c in HAPROXY_BINARY_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("haproxy")


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
            raise BalancerUnavailableError(f"HAProxy Runtime API at {self.address} unreachable: {e!r}") from e
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
        name: str = "",
        timeout_s: float = 5.0,
        delete_wait_s: float = 5.0,
    ) -> None:
        self.runtime = HAProxyRuntime(socket_address, timeout_s)
        self.backend = backend
        self.algorithm = algorithm
        self.prefix = prefix
        self.health_check = health_check  # (interval_s, rise, fall) or None
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
                await self._cmd(f"set server {ref} state {_STATE_VERB[new.state]}")
        return plan

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
        try:
            await self._cmd(" ".join(args), ok=("New server registered",))
        except BalancerRejectedError as e:
            if "Already exists" not in str(e) and "already exists" not in str(e):
                raise
        if self.health_check is not None:
            await self._cmd(f"enable health {ref}")
        # dynamic servers start in maintenance: put it in its desired state
        await self._cmd(f"set server {ref} state {_STATE_VERB[m.state]}")

    async def _delete(self, server_id: str) -> None:
        ref = self._ref(server_id)
        await self._cmd(f"set server {ref} state maint")
        await self._cmd(f"shutdown sessions server {ref}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delete_wait_s
        while True:
            reply = (await self.runtime.command(f"del server {ref}")).strip()
            if not reply or reply.startswith("Server deleted") or "No such server" in reply:
                return
            if loop.time() >= deadline:
                raise BalancerUnavailableError(f"HAProxy kept {ref}: {reply} (retry later)")
            await asyncio.sleep(0.1)

    async def drain(self, server_id: str) -> None:
        if server_id not in await self._server_rows():
            raise UnknownMemberError(f"server {server_id!r} is not a member of backend {self.backend}")
        await self._cmd(f"set server {self._ref(server_id)} state drain")

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


# --- configuration ----------------------------------------------------------------------------------------


def render_haproxy_config(
    spec: LoadBalancerSpec,
    socket_path: str,
    *,
    stats_port: int | None = None,
    pem_path: str | None = None,
    maxconn: int = 4000,
    nbthread: int | None = None,
    sticky_table_size: str = "1m",
) -> str:
    """An HAProxy 2.6 configuration for one balancer: a frontend on the spec's address and port, an empty
    backend (members arrive as dynamic servers through the Runtime API), and the stats socket at
    `socket_path` with `level admin`. `stats_port` adds an HTTP stats page and Prometheus `/metrics`.
    `pem_path` is the combined certificate + key PEM for TLS (HAProxy wants them in one file)."""
    backend = spec.haproxy_backend
    bind = f"[{spec.ip_address}]" if ":" in spec.ip_address else spec.ip_address
    lines = [
        "# generated by poolctl: members are dynamic servers managed through the Runtime API",
        "global",
        f"    stats socket {socket_path} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    maxconn {maxconn}",
    ]
    if nbthread:
        lines.append(f"    nbthread {nbthread}")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    option redispatch",
        "    retries 2",
        "    timeout connect 5s",
        f"    timeout client {round(spec.client_send_timeout_s * 1000)}ms",
        f"    timeout http-request {round(spec.request_head_timeout_s * 1000)}ms",
        "    timeout server 300s",
        "    timeout http-keep-alive 30s",
        "",
        f"frontend fe_{spec.name}",
    ]
    if spec.ssl_enabled:
        crt = pem_path or spec.ssl_certificate
        lines.append(f"    bind {bind}:{spec.port} ssl crt {crt}")
        proto = "https"
    else:
        lines.append(f"    bind {bind}:{spec.port}")
        proto = "http"
    lines += [
        f"    maxconn {spec.max_client_connections}",
        "    option forwardfor",
        f"    http-request set-header X-Forwarded-Proto {proto}",
        f"    default_backend {backend}",
        "",
        f"backend {backend}",
        f"    balance {_ALGORITHMS[spec.algorithm]}",
    ]
    if spec.algorithm == "ip_hash":
        lines.append(
            "    hash-type consistent"
        )  # 2.6 accepts dynamic servers with hashing only when consistent
    if spec.sticky_sessions:
        c = spec.sticky_cookie
        secure = "; Secure" if spec.ssl_enabled else ""
        lines += [
            "    # sticky sessions: `cookie` is refused on dynamic servers in 2.6, so a stick table maps the",
            "    # cookie (a hash of the server name) to the server; a server out of rotation is re-balanced",
            f"    stick-table type string len 32 size {sticky_table_size} expire 24h",
            f"    http-request set-var(txn.lb_ck) req.cook({c})",
            f"    stick match req.cook({c})",
            "    stick store-response srv_name,xxh64,hex",
            "    http-response set-var(txn.lb_sv) srv_name,xxh64,hex",
            f'    http-response add-header Set-Cookie "{c}=%[var(txn.lb_sv)]; Path=/; HttpOnly; SameSite=Lax{secure}"'
            " if !{ var(txn.lb_ck),strcmp(txn.lb_sv) eq 0 }",
        ]
    if spec.health_check_enabled:
        lines += [f"    option httpchk GET {spec.health_check_path}", "    http-check expect status 200-399"]
    if stats_port is not None:
        lines += [
            "",
            "frontend stats",
            f"    bind 127.0.0.1:{stats_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    stats enable",
            "    stats uri /stats",
        ]
    return "\n".join(lines) + "\n"


# --- a process manager for tests, dev and bench -------------------------------------------------------------


@dataclass
class HAProxyProcess:
    """Runs HAProxy in the foreground (`haproxy -f cfg -db`) with a generated config in `workdir`.

    `restart()` stops and starts it again: like a reload, every dynamic server is gone afterwards."""

    spec: LoadBalancerSpec
    workdir: Path
    binary: str | None = None
    stats_port: int | None = None
    nbthread: int | None = None
    proc: asyncio.subprocess.Process | None = None

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "admin.sock")

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def driver(self) -> HAProxyDriver:
        return HAProxyDriver.from_spec(self.spec, self.socket_path)

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pem = None
        if self.spec.ssl_enabled and self.spec.ssl_certificate and self.spec.ssl_key:
            pem_file = self.workdir / "tls.pem"
            pem_file.write_text(
                Path(self.spec.ssl_certificate).read_text() + Path(self.spec.ssl_key).read_text()
            )
            pem_file.chmod(0o600)
            pem = str(pem_file)
        text = render_haproxy_config(
            self.spec, self.socket_path, stats_port=self.stats_port, pem_path=pem, nbthread=self.nbthread
        )
        self.config_path.write_text(text)

    async def start(self, timeout_s: float = 15.0) -> None:
        binary = self.binary or haproxy_binary()
        if binary is None:
            raise RuntimeError("HAProxy is not installed (scripts/install-system-deps.sh installs it)")
        self.write_config()
        check = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            "-q",
            "-f",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await check.communicate()
        if check.returncode != 0:
            raise RuntimeError(f"HAProxy refused {self.config_path}: {out.decode(errors='replace')}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                binary,
                "-f",
                str(self.config_path),
                "-db",
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(log)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        runtime = HAProxyRuntime(self.socket_path, 2.0)
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"HAProxy exited at start; see {self.log_path}: {self.log_path.read_text()[-2000:]}"
                )
            try:
                if "Name:" in await runtime.command("show info"):
                    return
            except BalancerUnavailableError:
                pass
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"HAProxy's stats socket did not open; see {self.log_path}")
            await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> HAProxyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def temp_workdir(prefix: str = "poolctl-haproxy-") -> Path:
    """A short path for the unix socket (sun_path is limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = [
    "HAProxyDriver",
    "HAProxyProcess",
    "HAProxyRuntime",
    "decode_server_name",
    "encode_server_name",
    "haproxy_binary",
    "parse_stat_csv",
    "render_haproxy_config",
]
