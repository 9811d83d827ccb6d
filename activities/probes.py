"""Health probes: HTTP(S), TCP connect and ICMP echo. One `Prober` per worker process.

Every probe returns a `ProbeResult` and never raises for a target problem. A probe that
cannot run because of *this worker's* configuration (no permission to open ICMP sockets,
a CA file that is missing or not PEM, a check with no port to probe) returns a result with
`config_error=True`: the check is misconfigured, the target is not down.

HTTP client choice: **aiohttp on the hot path, not httpx** (measured with `bench/probes.py`,
which runs the real `watch_target` loop for N targets in one process, fresh connection per
probe, on this 2-core machine):

- aiohttp: 2,000 targets / 5 s (400 probes/s) at ~27% of one core, jitter p99 6-180 ms
  depending on what else the box runs; 4,000 targets (800/s) still kept up at ~54% of a core.
- httpx 0.28 (+ sniffio, one shared AsyncClient, max_connections=1000): 2,000 targets passed
  on a quiet box at ~65-70% of a core (2.5x aiohttp's CPU), but one 2,000-target run and both
  4,000-target run **wedged**: the process sat at ~95% CPU inside httpcore's
  `AsyncConnectionPool._assign_requests_to_connections`, which re-scans every connection for
  every queued request (quadratic as the queue grows, encode/httpx#3215), so once a burst
  queues requests it never catches up and no probe completes. A worker that also runs the
  Temporal SDK for thousands of heartbeating activities cannot afford either behaviour.

httpx remains fine outside the probe hot path (single calls, admin APIs).

**Status-only fast path.** A plain-HTTP check that does not look at the body (no body_match/body_regex,
no keep-alive) does not go through aiohttp: `_http_status` opens one connection, writes a fixed
HTTP/1.1 request head (`Connection: close`), reads the status line and headers and closes, as
HAProxy's `httpchk` does. Measured against 200 loopback ports in one process (2,000 probes): ~160 us
of CPU per probe against ~325 us through aiohttp; a worker of 5,000 checks at 5 s makes 1,000 probes/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Any

import aiohttp
import icmplib

from poolctl.domain.errors import PROBE_CONFIG_ERROR
from poolctl.domain.health import ProbeResult
from poolctl.domain.health_spec import HealthCheckSpec

__all__ = [
    "ProbeConfigError",
    "ProbeResult",
    "Prober",
    "get_prober",
    "close_shared_prober",
    "raw_icmp_allowed",
]

USER_AGENT = "poolctl-health/0.1"
_READ_CHUNK = 16 * 1024


class ProbeConfigError(Exception):
    """The probe cannot run because of the worker's own configuration (not the target's fault)."""


def _config_error(msg: str) -> ProbeResult:
    return ProbeResult(ok=False, config_error=True, error=f"{PROBE_CONFIG_ERROR}: {msg}", latency_ms=None)


def _failure(msg: str, started: float, status_code: int | None = None) -> ProbeResult:
    return ProbeResult(
        ok=False, error=msg, status_code=status_code, latency_ms=(time.perf_counter() - started) * 1000.0
    )


_raw_icmp: bool | None = None


def raw_icmp_allowed() -> bool:
    """Whether this process may open raw ICMP sockets (root or CAP_NET_RAW). Checked once."""
    global _raw_icmp
    if _raw_icmp is None:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError:
            _raw_icmp = False
        else:
            s.close()
            _raw_icmp = True
    return _raw_icmp


def _url(scheme: str, host: str, port: int, path: str) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{scheme}://{host}:{port}{path}"


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read at most `limit` bytes of a body; a larger body is cut, never buffered whole."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = await content.read(min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


_MAX_HEAD_BYTES = 64 * 1024


class _BadResponse(Exception):
    """The server answered something that is not an HTTP response head."""


def _request_head(method: str, host: str, port: int, path: str) -> bytes:
    """An HTTP/1.1 request head without a body (`path` is a checked UrlPath: printable ASCII)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    authority = host if port == 80 else f"{host}:{port}"
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
        f"{length}Connection: close\r\n\r\n"
    ).encode("ascii")


class _StatusReader(asyncio.Protocol):
    """Reads one response head (status line and headers) and resolves `reply` with its status code;
    the body is never read. Fails `reply` with _BadResponse or the connection's error."""

    def __init__(self, reply: asyncio.Future[int]) -> None:
        self.reply = reply
        self.head = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_HEAD_BYTES:
                self.reply.set_exception(_BadResponse(f"response head over {_MAX_HEAD_BYTES} bytes"))
            return
        line = bytes(self.head[: self.head.find(b"\r\n")])
        parts = line.split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            self.reply.set_exception(_BadResponse(f"status line {line[:80]!r}"))
            return
        self.reply.set_result(int(parts[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(
                _BadResponse(
                    f"connection lost: {exc}" if exc else "connection closed before the response head"
                )
            )


class Prober:
    """Runs probes. Holds one aiohttp session (bounded connection limit) shared by every check.

    - `max_connections`: probes in flight over HTTP at once (more wait for a slot; the wait
      counts toward the probe's timeout).
    - `keepalive`: reuse connections between probes of the same target. Off by default: a
      health probe then proves the server still *accepts* connections (as HAProxy's checks do),
      and the worker holds no idle socket per target.
    - `icmp_privileged`: True = raw sockets, False = unprivileged datagram ICMP sockets
      (Linux `net.ipv4.ping_group_range`), None = raw when this process may open them.
    """

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive: bool = False,
        icmp_privileged: bool | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.icmp_privileged = icmp_privileged
        self._session: aiohttp.ClientSession | None = None
        self._ssl_contexts: dict[str | None, ssl.SSLContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None  # max_connections, for the status-only path

    # ------------------------------------------------------------------ lifecycle

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._loop = asyncio.get_running_loop()
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                force_close=not self.keepalive,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ dispatch

    async def probe(self, spec: HealthCheckSpec, host: str, port: int | None = None) -> ProbeResult:
        """Probe `host` as `spec` says; `port` is the server's port (the spec's `port` overrides it)."""
        try:
            if spec.type in ("http", "https"):
                return await self.http(spec, host, port)
            if spec.type == "tcp":
                return await self.tcp(spec, host, port)
            return await self.icmp(spec, host)
        except ProbeConfigError as e:
            return _config_error(str(e))

    # ------------------------------------------------------------------ HTTP(S)

    def ssl_for(self, spec: HealthCheckSpec) -> ssl.SSLContext | bool:
        """The TLS setting for a check; raises ProbeConfigError for an unusable CA file."""
        if not spec.tls_verify:
            return False
        if spec.ca_file is None:
            return True
        ctx = self._ssl_contexts.get(spec.ca_file)
        if ctx is None:
            try:
                ctx = ssl.create_default_context(cafile=spec.ca_file)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ProbeConfigError(f"cannot load ca_file {spec.ca_file!r}: {e}") from e
            self._ssl_contexts[spec.ca_file] = ctx
        return ctx

    async def http(self, spec: HealthCheckSpec, host: str, server_port: int | None) -> ProbeResult:
        port = spec.target_port(server_port)
        if port is None:
            raise ProbeConfigError("the check has no port and the server exposes none")
        if spec.type == "http" and not spec.needs_body and not self.keepalive:
            return await self._http_status(spec, host, port)
        scheme = "https" if spec.type == "https" else "http"
        ssl_setting = self.ssl_for(spec) if scheme == "https" else True
        session = self._get_session()
        url = _url(scheme, host, port, spec.path)
        started = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(spec.timeout):
                async with session.request(spec.method, url, ssl=ssl_setting, allow_redirects=False) as resp:
                    status = resp.status
                    body = b""
                    if spec.method != "HEAD" and (spec.needs_body or self.keepalive):
                        body = await _read_bounded(resp.content, spec.max_body_bytes)
        except TimeoutError:
            return _failure(f"timeout after {spec.timeout:g}s", started, status)
        except aiohttp.ClientConnectorCertificateError as e:
            return _failure(f"TLS certificate rejected: {e.certificate_error}", started)
        except aiohttp.ClientSSLError as e:
            return _failure(f"TLS error: {e}", started)
        except aiohttp.ClientConnectorError as e:
            return _failure(f"connect failed: {e.os_error.strerror or e.os_error}", started)
        except (aiohttp.ClientError, OSError) as e:
            return _failure(f"{type(e).__name__}: {e}", started, status)
        latency = (time.perf_counter() - started) * 1000.0
        if not spec.status_ok(status):
            return ProbeResult(
                ok=False, status_code=status, latency_ms=latency, error=f"unexpected status {status}"
            )
        if spec.needs_body and not spec.body_ok(body.decode("utf-8", errors="replace")):
            what = (
                f"body_match {spec.body_match!r}"
                if spec.body_match is not None
                else f"body_regex {spec.body_regex!r}"
            )
            return ProbeResult(
                ok=False,
                status_code=status,
                latency_ms=latency,
                error=f"{what} not found in the first {spec.max_body_bytes} bytes",
            )
        return ProbeResult(ok=True, status_code=status, latency_ms=latency)

    async def _http_status(self, spec: HealthCheckSpec, host: str, port: int) -> ProbeResult:
        """Plain HTTP when only the status counts: one connection, the request, the status line and
        headers, close. About a third of the CPU of the aiohttp path (see the module docstring)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_connections)
        started = time.perf_counter()
        transport: asyncio.BaseTransport | None = None
        reply: asyncio.Future[int] = loop.create_future()
        try:
            async with asyncio.timeout(spec.timeout), self._slots:
                transport, _ = await loop.create_connection(lambda: _StatusReader(reply), host, port)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(_request_head(spec.method, host, port, spec.path))
                status = await reply
        except TimeoutError:
            return _failure(f"timeout after {spec.timeout:g}s", started)
        except _BadResponse as e:
            return _failure(f"bad response: {e}", started)
        except ConnectionRefusedError:
            return _failure("connect failed: connection refused", started)
        except OSError as e:
            return _failure(f"connect failed: {e.strerror or e}", started)
        finally:
            if transport is not None:
                transport.close()
            # A timeout inside create_connection closes the new transport there: connection_lost would then
            # fail a reply nobody awaits ("Future exception was never retrieved", one log line per probe).
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()  # retrieved: a failure after the timeout adds nothing
        latency = (time.perf_counter() - started) * 1000.0
        if not spec.status_ok(status):
            return ProbeResult(
                ok=False, status_code=status, latency_ms=latency, error=f"unexpected status {status}"
            )
        return ProbeResult(ok=True, status_code=status, latency_ms=latency)

    # ------------------------------------------------------------------ TCP

    async def tcp(self, spec: HealthCheckSpec, host: str, server_port: int | None) -> ProbeResult:
        port = spec.target_port(server_port)
        if port is None:
            raise ProbeConfigError("the check has no port and the server exposes none")
        started = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(spec.timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return _failure(f"timeout after {spec.timeout:g}s", started)
        except ConnectionRefusedError:
            return _failure("connection refused", started)
        except OSError as e:
            return _failure(f"connect failed: {e.strerror or e}", started)
        latency = (time.perf_counter() - started) * 1000.0
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        return ProbeResult(ok=True, latency_ms=latency)

    # ------------------------------------------------------------------ ICMP

    def icmp_mode(self) -> bool:
        """True for raw (privileged) sockets."""
        return raw_icmp_allowed() if self.icmp_privileged is None else self.icmp_privileged

    async def icmp(self, spec: HealthCheckSpec, host: str) -> ProbeResult:
        privileged = self.icmp_mode()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout + 1.0):
                result: Any = await icmplib.async_ping(
                    host, count=1, interval=0, timeout=spec.timeout, privileged=privileged
                )
        except (icmplib.SocketPermissionError, PermissionError) as e:
            mode = "raw (privileged)" if privileged else "unprivileged datagram"
            hint = (
                "run the worker with CAP_NET_RAW"
                if privileged
                else "allow the worker's group in net.ipv4.ping_group_range, or grant CAP_NET_RAW"
            )
            raise ProbeConfigError(f"no permission to open {mode} ICMP sockets ({e}); {hint}") from e
        except icmplib.NameLookupError as e:
            return _failure(f"name lookup failed: {e}", started)
        except TimeoutError:
            return _failure(f"timeout after {spec.timeout:g}s", started)
        except icmplib.ICMPLibError as e:
            return _failure(f"{type(e).__name__}: {e}", started)
        except OSError as e:
            return _failure(f"ICMP send failed: {e.strerror or e}", started)
        if not result.is_alive:
            return _failure(f"no echo reply within {spec.timeout:g}s", started)
        return ProbeResult(ok=True, latency_ms=float(result.avg_rtt))


_shared: Prober | None = None


def get_prober() -> Prober:
    """The worker's shared Prober (one aiohttp session per process and event loop)."""
    global _shared
    loop = asyncio.get_running_loop()
    if _shared is None or (_shared._loop is not None and _shared._loop is not loop):
        _shared = Prober()
    return _shared


async def close_shared_prober() -> None:
    """Call on worker shutdown."""
    global _shared
    if _shared is not None:
        await _shared.close()
        _shared = None
