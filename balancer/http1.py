"""The built-in balancer's hot path: an asyncio HTTP/1.1 reverse proxy framed by llhttp (`httptools`).

One `ClientConn` per client connection (keep-alive; pipelined requests queue and are answered in order)
and one `UpstreamConn` per connection to a member, kept in a per-address pool of idle keep-alive
connections (`UpstreamPool`). llhttp, the parser of Node.js, parses every request and every response in
its strict mode; this module refuses on top of it what llhttp lets through (the list, with the test proving
each, is `docs/security.md`, section "Built-in balancer"). Heads are rebuilt from the parsed fields, never
forwarded as received; bodies stream through with their Content-Length, or re-chunked from llhttp's decoded
chunk data, so no byte the parser did not frame reaches the other side. Flow control follows the
transports' pause/resume_writing callbacks: a slow reader on one side pauses reading on the other.

Every pick goes through `Balancing.pick` and every request through the host's `stats.begin/end`.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import socket
import time
from collections import deque
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
)

from poolctl.domain.balancing import (
    NO_MEMBER_RETRY_AFTER_S,
    NO_MEMBER_STATUS,
    Balancing,
    NoHealthyMember,
    no_member_body,
)

log = logging.getLogger("poolctl.balancer")

MAX_HEAD = (
    64 * 1024
)  # request/response line + headers (HAProxy tune.bufsize, nginx large_client_header_buffers)
MAX_CONTENT_LENGTH = (1 << 63) - 1  # HAProxy's bound; llhttp alone accepts up to 2**64 - 1 (20 digits)
MAX_PIPELINE = 64  # parsed requests waiting behind the one in progress before reading pauses
HIGH_WATER = 256 * 1024  # buffered bytes at which reading from the other side pauses
MAX_IDLE_PER_ADDRESS = 512
LINGER_S = (
    2.0  # a closing client connection drains the client's bytes this long at most (nginx lingering_time)
)
REFUSED_PATH_PREFIX = b"/admin"  # the local server's admin API (localserver/server.py): never via a balancer

_perf = time.perf_counter

# header kinds (requests and responses share the table; some kinds only matter on one side)
_DROP, _CL, _TE, _CONN, _HOST, _COOKIE, _XFF, _EXPECT = range(8)
_HOP = {
    b"connection": _CONN,
    b"keep-alive": _DROP,
    b"proxy-authenticate": _DROP,
    b"proxy-authorization": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"trailers": _DROP,
    b"transfer-encoding": _TE,
    b"upgrade": _DROP,
    b"content-length": _CL,
}
_REQ_KINDS = {
    **_HOP,
    b"host": _HOST,
    b"cookie": _COOKIE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _DROP,  # replaced by ours
    b"x-forwarded-host": _DROP,  # replaced by ours
    b"expect": _EXPECT,  # answered by the proxy itself
}
_RESP_KINDS = _HOP

_STATUS_LINES: dict[int, bytes] = {}  # the reason phrase is ours (RFC 9110: clients ignore it)


def _status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Status"
        line = _STATUS_LINES[code] = b"HTTP/1.1 %d %s" % (code, phrase.encode())
    return line


# response body modes
_B_NONE, _B_LENGTH, _B_CHUNKED, _B_EOF = range(4)

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class ProtocolError(ValueError):
    """A message broke HTTP/1.1 framing (llhttp's error, or one of the checks of this module)."""


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp (the message, or the connection, is done)."""


class ProxyHost(Protocol):
    """What a connection needs from the balancer that owns it (`proxy.BalancerProxy`)."""

    config: Any  # proxy.ProxyConfig: name, timeouts, max_client_connections
    balancing: Balancing
    stats: Any  # proxy.ProxyStats: begin(sid), end(sid, status | None, latency_s), requests, no_member
    ssl_context: Any
    _pool: UpstreamPool
    _clients: set[ClientConn]
    _sticky: bool
    _cookie_name: bytes
    _proto_line: bytes
    _cookie_lines: dict[str, bytes]

    def _set_cookie_line(self, token: str) -> bytes: ...


def refused_path(target: bytes) -> bool:
    """True when a request target reaches `/admin` or below on the member, however it is spelled
    (percent-encoding, dot segments, repeated slashes, `;` parameters, absolute form, any case)."""
    if b"%" not in target and b"admin" not in target.lower():
        return False
    path = target
    if not path.startswith(b"/"):  # absolute form: http://host/path
        scheme, sep, rest = path.partition(b"://")
        path = b"/" + rest.partition(b"/")[2] if sep else path
    path = path.partition(b"?")[0].partition(b"#")[0]
    for _ in range(3):  # decode until stable (double encoding)
        decoded = unquote_to_bytes(path)
        if decoded == path:
            break
        path = decoded
    path = b"/".join(seg.partition(b";")[0] for seg in path.replace(b"\\", b"/").split(b"/"))
    path = posixpath.normpath(b"/" + path).lower()
    if path.startswith(b"//"):
        path = b"/" + path.lstrip(b"/")
    return path == REFUSED_PATH_PREFIX or path.startswith(REFUSED_PATH_PREFIX + b"/")


def _conn_tokens(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.lower().split(b",")]


def _status_response(
    code: int, text: str, *, close: bool, keep_alive_10: bool, head: bool, extra: bytes
) -> bytes:
    body = text.encode()
    conn = b"Connection: close\r\n" if close else (b"Connection: keep-alive\r\n" if keep_alive_10 else b"")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (code, _REASONS.get(code, "Error").encode(), len(body), extra, conn, b"" if head else body)
    )


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


# --- upstream side ---------------------------------------------------------------------------------------


class _HeadCollector:
    """llhttp's header callback, shared by both sides: headers the proxy forwards as they are go to
    `lines`, the ones it interprets (`_kinds`) to `special`; trailers of a chunked body are dropped."""

    __slots__ = ()
    _kinds: dict[bytes, int]
    in_head: bool
    lines: list[bytes]
    special: list[tuple[int, bytes]]

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            kind = self._kinds.get(name.lower())
            if kind is None:
                self.lines.append(name + b": " + value)
            else:
                self.special.append((kind, value))


class UpstreamConn(_HeadCollector, asyncio.Protocol):
    """One keep-alive connection to a member, lent to one `ClientConn` at a time; its llhttp response
    parser calls back here and the calls are relayed to the owner."""

    _kinds = _RESP_KINDS

    __slots__ = (
        "pool",
        "addr",
        "transport",
        "owner",
        "closed",
        "idle_since",
        "last",
        "parser",
        "lines",
        "special",
        "in_head",
        "interim",
        "began",
        "done",
        "extra",
        "head_only",
        "head_size",
    )

    def __init__(self, pool: UpstreamPool, addr: str) -> None:
        self.pool = pool
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.owner: ClientConn | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last = 0.0
        self.parser = HttpResponseParser(self)
        self.lines: list[bytes] = []
        self.special: list[tuple[int, bytes]] = []
        self.in_head = False
        self.interim = False
        self.began = False  # a response has started on this exchange
        self.done = False  # the response of this exchange is complete
        self.extra = False  # the member sent bytes after it: the connection cannot be reused
        self.head_only = False
        self.head_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.done:  # a second response to one request
            self.extra = True
            raise _Stop
        self.began = True
        self.in_head = True
        self.head_size = 0
        self.lines = [b""]  # [status line] + the headers forwarded as they are
        self.special = []

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        code = parser.get_status_code()
        owner = self.owner
        assert owner is not None
        if code < 200:
            self.interim = True
            owner.up_interim(code, self.lines)
            return
        owner.up_head(code, self.lines, self.special, parser.get_http_version(), parser.should_keep_alive())
        if owner.is_head:  # llhttp cannot be told a response has no body: stop it after the head
            self.done = self.head_only = True
            raise _Stop

    def on_body(self, data: bytes) -> None:
        owner = self.owner
        assert owner is not None
        if owner.bmode == _B_CHUNKED:
            owner.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            owner.out.append(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True

    # transport callbacks
    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:  # an idle connection must not speak: drop it
            self.close()
            return
        self.last = self.pool.clock
        was_in_head = self.in_head
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as e:
            cause = e.__context__
            if not isinstance(cause, _Stop):
                owner.up_bad(cause if isinstance(cause, ProtocolError) else ProtocolError(str(cause or e)))
                return
        except HttpParserError as e:
            owner.up_bad(ProtocolError(f"malformed response: {e}"))
            return
        except HttpParserUpgrade:
            owner.up_bad(ProtocolError("unexpected protocol switch"))
            return
        if self.in_head:  # a head spread over reads (bounded here: llhttp buffers a partial header)
            self.head_size = self.head_size + len(data) if was_in_head and self.head_size else len(data)
            if self.head_size > MAX_HEAD:
                owner.up_bad(ProtocolError("response head too large"))
                return
        if self.done:
            reusable = not self.extra
            if self.head_only:  # the head must end the data: anything after it is not a response to us
                self.parser = HttpResponseParser(self)
                reusable = reusable and data.find(b"\r\n\r\n") == len(data) - 4
            if owner.bmode == _B_CHUNKED:
                owner.out.append(b"0\r\n\r\n")
            owner._finish(reusable and owner.up_reuse)
        else:
            owner.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.up_lost(self, exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_reading(1)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_reading(1)

    def close(self) -> None:
        self.owner = None
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections per member address (LIFO, so the warmest one is reused first)."""

    def __init__(self, connect_timeout_s: float, idle_timeout_s: float) -> None:
        self.idle: dict[str, list[UpstreamConn]] = {}
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.clock = 0.0  # coarse loop time, refreshed by the proxy's sweeper
        self.connects = 0  # connections opened (statistics for tests and benchmarks)
        self._endpoints: dict[str, tuple[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, addr: str) -> UpstreamConn | None:
        idle = self.idle.get(addr)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamConn) -> None:
        conn.owner = None
        if conn.closed:
            return
        idle = self.idle.get(conn.addr)
        if idle is None:
            idle = self.idle[conn.addr] = []
        if len(idle) >= MAX_IDLE_PER_ADDRESS:
            conn.close()
            return
        conn.idle_since = self.clock
        idle.append(conn)

    def discard(self, conn: UpstreamConn) -> None:
        idle = self.idle.get(conn.addr)
        if idle and conn in idle:
            idle.remove(conn)

    def connect(self, client: ClientConn, addr: str) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(client, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: ClientConn, addr: str) -> None:
        ep = self._endpoints.get(addr)
        if ep is None:
            host, _, port = addr.rpartition(":")
            ep = self._endpoints[addr] = (host.strip("[]"), int(port))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: UpstreamConn(self, addr), ep[0], ep[1])
        except (OSError, TimeoutError) as e:
            client.up_connect_failed(addr, e)
            return
        self.connects += 1
        conn.last = self.clock
        client.up_connected(conn)

    def sweep(self, now: float) -> None:
        limit = now - self.idle_timeout_s
        for idle in list(self.idle.values()):
            for conn in [c for c in idle if c.idle_since < limit]:
                conn.close()

    def close_addresses(self, keep: set[str]) -> None:
        for addr in [a for a in self.idle if a not in keep]:
            for conn in list(self.idle.pop(addr)):
                conn.close()

    def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.close_addresses(set())


# --- client side -----------------------------------------------------------------------------------------


_NO_BODY: list[bytes] = []


class _Request:
    """One parsed request head, and its body as framed bytes not yet written to the member.
    (Defaults are class attributes: a request sets only what differs, on the hot path.)"""

    head = b""  # the rebuilt head with its blank line; without Host (and the blank line) when the client sent none
    no_host = False
    complete = False
    chunked = False
    has_body = False
    is_head = False
    keep = True
    v10 = False
    cookie: str | None = None
    expect = False
    error: tuple[int, str] | None = None  # answered by the proxy itself, then the connection closes
    parts: list[bytes] = _NO_BODY  # never appended to: a request's first body bytes give it its own list

    @classmethod
    def refused(cls, code: int, text: str) -> _Request:
        req = cls()
        req.error = (code, text)
        req.keep = False
        return req


class ClientConn(_HeadCollector, asyncio.Protocol):
    """One client connection: parses requests (llhttp), picks a member, relays the exchange, keeps stats."""

    _kinds = _REQ_KINDS

    __slots__ = (
        "proxy",
        "pool",
        "transport",
        "parser",
        "queue",
        "cur",
        "in_head",
        "url",
        "lines",
        "special",
        "head_cont",
        "head_bytes",
        "big_read",
        "read_seen",
        "head_started",
        "rclosed",
        "buffered",
        "out",
        "busy",
        "closed",
        "client_ip",
        "xff_ip",
        "fwd_lines",
        "last",
        "rpause",
        "wpaused",
        "wpaused_since",
        "eof",
        "linger_since",
        # the exchange in progress (queue[0])
        "up",
        "addr",
        "sid",
        "started",
        "fwd_head",
        "fresh",
        "is_head",
        "cookie",
        "keep",
        "v10",
        "bmode",
        "code",
        "sent_head",
        "up_reuse",
    )

    def __init__(self, proxy: ProxyHost) -> None:
        self.proxy = proxy
        self.pool = proxy._pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.cur: _Request | None = None  # the request whose body is being parsed
        self.in_head = False
        self.url = b""
        self.lines: list[bytes] = []
        self.special: list[tuple[int, bytes]] = []
        self.head_cont = False  # the head in progress began in an earlier read
        self.head_bytes = 0  # bytes of the head in progress (an upper bound)
        self.big_read = False
        self.read_seen = 0  # bytes of the current read that belong to earlier messages (at least)
        self.head_started = 0.0  # clock when the head in progress began (0: none; 408 after the deadline)
        self.rclosed = False  # nothing more is parsed (an error is queued, or the protocol was switched)
        self.buffered = 0  # body bytes parsed but not yet written to a member
        self.out: list[bytes] = []  # bytes for the client, written once per event
        self.busy = False
        self.closed = False
        self.client_ip = ""
        self.xff_ip = b""
        self.fwd_lines = b""
        self.last = 0.0
        self.rpause = 0  # bit 1: upstream write buffer full; 2: connect pending; 4: pipelined backlog
        self.wpaused = False
        self.wpaused_since = 0.0
        self.eof = False
        self.linger_since = 0.0
        self.up: UpstreamConn | None = None
        self.addr = ""
        self.sid = ""
        self.started = 0.0
        self.fwd_head = b""
        self.fresh = False
        self.is_head = False
        self.cookie = b""
        self.keep = True
        self.v10 = False
        self.bmode = _B_NONE
        self.code = 0
        self.sent_head = False
        self.up_reuse = False

    # --- client transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        proxy = self.proxy
        self.last = self.head_started = self.pool.clock or 1e-9
        if len(proxy._clients) >= proxy.config.max_client_connections:
            self.rclosed = self.closed = True
            transport.write(  # type: ignore[attr-defined]
                _status_response(503, "503 Service Unavailable: too many client connections\n",
                                 close=True, keep_alive_10=False, head=False, extra=b"Retry-After: 1\r\n")
            )  # fmt: skip
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.xff_ip = self.client_ip.encode()
        self.fwd_lines = b"X-Forwarded-For: " + self.xff_ip + b"\r\n" + proxy._proto_line
        proxy._clients.add(self)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.rclosed:
            return
        self.last = self.pool.clock
        self.head_cont = self.in_head  # on_message_begin resets it
        self.big_read = len(data) >= MAX_HEAD
        self.read_seen = 0
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Stop):
                self.rclosed = True
            else:
                log.exception("balancer %s: request callback", self.proxy.config.name, exc_info=cause)
                self._bad_request(400, "400 Bad Request\n")
        except HttpParserUpgrade:  # Upgrade or CONNECT: the request is served as a plain one, then we close
            if self.queue:
                self.queue[-1].keep = False
            self.rclosed = True
        except HttpParserError as e:
            self._bad_request(400, f"400 Bad Request: malformed request ({e})\n")
        if self.in_head:  # a head spread over reads (llhttp buffers a partial header: bound it)
            self.head_bytes = self.head_bytes + len(data) if self.head_cont else len(data) - self.read_seen
            if self.head_bytes > MAX_HEAD and not self.rclosed:
                self._bad_request(431, "431 Request Header Fields Too Large\n")
        q = self.queue
        if not self.busy and len(q) == 1 and not self.buffered and not self.rpause and q[0].error is None:
            self._start(q[0])  # the common case: one request, nothing in progress
        else:
            self._pump()

    def eof_received(self) -> bool:
        # a half-closed client may still be waiting for its response (not possible over TLS)
        if self.busy and not self.closed and self.proxy.ssl_context is None:
            self.eof = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.rclosed = True
        self.proxy._clients.discard(self)
        if self.busy:
            self.busy = False
            up, self.up = self.up, None
            if up is not None:
                up.close()
            self.proxy.stats.end(self.sid, None, _perf() - self.started)
        self.queue.clear()
        self.out = []

    def pause_writing(self) -> None:
        self.wpaused = True
        self.wpaused_since = self.pool.clock
        up = self.up
        if up is not None and up.transport is not None and not up.closed:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        up = self.up
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    def pause_reading(self, reason: int) -> None:
        if not self.rpause and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.rpause |= reason

    def resume_reading(self, reason: int) -> None:
        if self.rpause & reason:
            self.rpause &= ~reason
            if not self.rpause and not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    # --- llhttp request callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.url = b""
        self.lines = [b""]  # [request line] + the headers forwarded as they are
        self.special = []
        self.head_cont = False
        self.head_started = self.pool.clock or 1e-9

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_started = 0.0
        req = self._parse_head()
        self.queue.append(req)
        if req.error is not None:
            raise _Stop
        self.cur = req

    def on_body(self, data: bytes) -> None:
        req = self.cur
        assert req is not None
        parts = req.parts
        if parts is _NO_BODY:
            parts = req.parts = []
        if req.chunked:
            parts += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            parts.append(data)
        self.buffered += len(data)
        self.read_seen += len(data)

    def on_message_complete(self) -> None:
        req = self.cur
        self.cur = None
        if req is not None:
            if req.chunked:
                req.parts = [*req.parts, b"0\r\n\r\n"]
            req.complete = True

    # --- requests ------------------------------------------------------------------------------------

    def _parse_head(self) -> _Request:
        """Check the head llhttp parsed against what llhttp lets through, and rebuild it for the member."""
        parser = self.parser
        version = parser.get_http_version()
        v10 = version == "1.0"
        if not v10 and version != "1.1":
            return _Request.refused(505, "505 HTTP Version Not Supported\n")
        method = parser.get_method()
        if method == b"CONNECT":
            return _Request.refused(405, "405 Method Not Allowed: CONNECT\n")
        url = self.url
        if url != b"/" and (b"%" in url or b"admin" in url.lower()) and refused_path(url):
            return _Request.refused(
                403, "403 Forbidden: /admin/ paths of pool servers are not reachable through a balancer\n"
            )
        req = _Request()  # the class holds the defaults: set only what differs
        if v10:
            req.v10 = True
        if method == b"HEAD":
            req.is_head = True
        if not parser.should_keep_alive():
            req.keep = False
        cl: bytes | None = None
        te: bytes | None = None
        host: bytes | None = None
        xff: bytes | None = None
        hosts = 0
        drop: list[bytes] | None = None
        proxy = self.proxy
        sticky_name = proxy._cookie_name if proxy._sticky else None
        kinds = _REQ_KINDS
        out = self.lines
        out[0] = method + b" " + url + b" HTTP/1.1"
        for kind, value in self.special:
            if kind == _HOST:
                hosts += 1
                host = value.strip()
                out.append(b"Host: " + host)
            elif kind == _COOKIE:
                out.append(b"Cookie: " + value)
                if sticky_name is not None and req.cookie is None:
                    for part in value.split(b";"):
                        k, eq, v = part.partition(b"=")
                        if eq and k.strip() == sticky_name:
                            req.cookie = v.strip().strip(b'"').decode("latin-1")
                            break
            elif kind == _CL:
                cl = value.strip()
            elif kind == _TE:
                te = value.strip().lower() if te is None else te + b", " + value.strip().lower()
            elif kind == _CONN:
                for token in _conn_tokens(value):
                    if token and token not in kinds and token not in (b"close", b"keep-alive"):
                        drop = [token] if drop is None else [*drop, token]
            elif kind == _XFF:
                xff = value.strip() if xff is None else xff + b", " + value.strip()
            elif kind == _EXPECT:
                req.expect = value.strip().lower() == b"100-continue"
        if self.big_read:  # a whole head in one read: bound it (smaller reads are bounded by head_bytes)
            size = sum(map(len, out)) + sum(len(v) + 20 for _, v in self.special) + 4 * len(out)
            self.read_seen += size
            if size > MAX_HEAD:
                return _Request.refused(431, "431 Request Header Fields Too Large\n")
        if hosts > 1:
            return _Request.refused(400, "400 Bad Request: more than one Host header\n")
        if host is None and not v10:
            return _Request.refused(400, "400 Bad Request: HTTP/1.1 request without Host\n")
        if te is not None:
            if v10:
                return _Request.refused(400, "400 Bad Request: Transfer-Encoding in an HTTP/1.0 request\n")
            if te != b"chunked":
                return _Request.refused(
                    501, "501 Not Implemented: only chunked transfer coding is supported\n"
                )
            req.chunked = req.has_body = True
            out.append(b"Transfer-Encoding: chunked")
        elif cl is not None:
            if len(cl) > 19 or int(cl) > MAX_CONTENT_LENGTH:
                return _Request.refused(400, "400 Bad Request: bad Content-Length\n")
            n = int(cl)
            req.has_body = n > 0
            out.append(b"Content-Length: %d" % n)
        if drop is not None:
            out = [out[0]] + [ln for ln in out[1:] if ln.partition(b":")[0].strip().lower() not in drop]
        if xff:
            out.append(b"X-Forwarded-For: " + xff + b", " + self.xff_ip)
            out.append(proxy._proto_line)
        else:
            out.append(self.fwd_lines)
        if host is not None:
            out.append(b"X-Forwarded-Host: " + host)
        else:
            req.no_host = True
        if v10:
            out.append(b"Connection: keep-alive")
        # llhttp refused any CR, LF or NUL in the method, the target and every header
        out.append(b"" if host is None else b"\r\n")
        req.head = b"\r\n".join(out)
        return req

    def _bad_request(self, code: int, text: str) -> None:
        """The bytes being parsed broke framing: answer `code` in turn (after the requests before it) and
        parse nothing more. A broken body of the request in progress ends that exchange here."""
        self.rclosed = True
        req, self.cur = self.cur, None
        if req is None:
            self.queue.append(_Request.refused(code, text))
            return
        if self.busy and self.queue and self.queue[0] is req:
            if self.sent_head:
                self._abort_exchange(f"bad request body: {text.strip()}")
                return
            up, self.up = self.up, None
            if up is not None:
                up.close()
            self.proxy.stats.end(self.sid, code, _perf() - self.started)
            self.busy = False
            self.queue.clear()
            self._reply(code, text, close=True)
            return
        req.error = (code, text)
        req.keep = False
        req.parts = []

    def _pump(self) -> None:
        """Start the next request, or write the body parsed so far to the member."""
        if not self.busy:
            self._next()
        else:
            up = self.up
            req = self.queue[0]
            if up is not None and req.parts:
                parts, req.parts = req.parts, []
                self.buffered -= sum(len(p) for p in parts)
                up.last = self.pool.clock
                up.transport.write(b"".join(parts) if len(parts) > 1 else parts[0])  # type: ignore[union-attr]
        if self.buffered > HIGH_WATER or len(self.queue) > MAX_PIPELINE:
            self.pause_reading(4)
        elif self.rpause & 4:
            self.resume_reading(4)

    def _next(self) -> None:
        """Start the requests at the head of the queue, in order, while none is in progress."""
        while not self.busy and not self.closed and self.queue:
            req = self.queue[0]
            if req.error is not None:
                code, text = req.error
                self.is_head = False
                self.v10 = False
                self._reply(code, text, close=True)
                return
            self._start(req)

    def _start(self, req: _Request) -> None:
        proxy = self.proxy
        self.is_head = req.is_head
        self.v10 = req.v10
        self.keep = req.keep
        try:
            pick = proxy.balancing.pick(self.client_ip, req.cookie, proxy.stats.active)
        except NoHealthyMember:
            stats = proxy.stats
            stats.requests += 1
            stats.no_member += 1
            self.queue.popleft()
            self._drop_parts(req)
            self._reply(
                NO_MEMBER_STATUS,
                no_member_body(proxy.config.name),
                close=not req.complete or not req.keep,
                extra=b"Retry-After: %d\r\n" % NO_MEMBER_RETRY_AFTER_S,
            )
            return
        member = pick.member
        addr = member.address
        self.fwd_head = head = req.head + b"Host: " + addr.encode() + b"\r\n\r\n" if req.no_host else req.head
        token = pick.set_cookie
        self.cookie = (
            b"" if token is None else proxy._cookie_lines.get(token) or proxy._set_cookie_line(token)
        )
        self.addr = addr
        self.sid = sid = member.server_id
        self.sent_head = False  # bmode and code are set with the head (nothing reads them before)
        self.busy = True
        proxy.stats.begin(sid)
        self.started = _perf()
        if req.expect and not req.complete and not req.v10:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        pool = self.pool
        up = pool.get(addr)
        if up is not None:
            self.fresh = False
            self._attach(up)
            up.last = pool.clock
            parts = req.parts
            if parts:
                req.parts = _NO_BODY
                self.buffered -= sum(len(p) for p in parts)
                up.transport.write(b"".join([head, *parts]))  # type: ignore[union-attr]
            else:
                up.transport.write(head)  # type: ignore[union-attr]
        else:
            self.fresh = True
            self.pause_reading(2)
            pool.connect(self, addr)

    def _drop_parts(self, req: _Request) -> None:
        self.buffered -= sum(len(p) for p in req.parts)
        req.parts = []

    def _attach(self, up: UpstreamConn) -> None:
        """Lend `up` to this connection's exchange."""
        self.up = up
        up.owner = self
        up.began = up.done = up.extra = up.head_only = False
        if self.wpaused and up.transport is not None:
            up.transport.pause_reading()

    # --- upstream events -------------------------------------------------------------------------------

    def up_connected(self, up: UpstreamConn) -> None:
        if not self.busy or self.closed or self.up is not None:
            self.pool.put(up)  # the client is gone (or the exchange ended): keep the connection
            return
        self._attach(up)
        req = self.queue[0]
        parts, req.parts = req.parts, []
        if parts:
            self.buffered -= sum(len(p) for p in parts)
            up.transport.write(b"".join([self.fwd_head, *parts]))  # type: ignore[union-attr]
        else:
            up.transport.write(self.fwd_head)  # type: ignore[union-attr]
        if self.rpause & 2:
            self.resume_reading(2)

    def up_connect_failed(self, addr: str, exc: BaseException) -> None:
        if not self.busy or self.closed or self.up is not None:
            return
        self._fail(exc, timeout=isinstance(exc, TimeoutError))

    def up_lost(self, up: UpstreamConn, exc: Exception | None) -> None:
        if up is not self.up:
            return
        self.up = None
        if self.bmode == _B_EOF and self.sent_head:  # a close-delimited body ends here
            self._finish(reusable=False)
            return
        req = self.queue[0]
        if not up.began and not self.fresh and req.complete and not req.has_body:
            # a pooled connection the member closed while idle: retry once on a fresh one
            self.fresh = True
            self.pause_reading(2)
            self.pool.connect(self, self.addr)
            return
        self._fail(exc or ConnectionResetError("connection closed by the server"), timeout=False)

    def up_timeout(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.close()
        self._fail(TimeoutError("no answer within the read timeout"), timeout=True)

    def up_bad(self, exc: ProtocolError) -> None:
        """The member's response broke framing: 502 if nothing was sent to the client yet, else cut."""
        self._fail(exc, timeout=False)

    def up_interim(self, code: int, lines: list[bytes]) -> None:
        if code == 101:
            raise ProtocolError("unexpected protocol switch")
        if not self.v10:  # interim responses (100, 103 Early Hints...) go through to HTTP/1.1 clients
            lines[0] = _status_line(code)
            self.out.append(b"\r\n".join(lines) + b"\r\n\r\n")

    def up_head(
        self,
        code: int,
        out: list[bytes],
        special: list[tuple[int, bytes]],
        version: str,
        keep_alive: bool,
    ) -> None:
        """The member's final response head: check it, and queue the rebuilt head for the client."""
        cl: bytes | None = None
        te: bytes | None = None
        drop: list[bytes] | None = None
        kinds = _RESP_KINDS
        out[0] = _STATUS_LINES.get(code) or _status_line(code)
        for kind, value in special:
            if kind == _CL:
                cl = value.strip()
            elif kind == _TE:
                te = value.strip().lower() if te is None else te + b", " + value.strip().lower()
            elif kind == _CONN:
                for token in _conn_tokens(value):
                    if token and token not in kinds and token not in (b"close", b"keep-alive"):
                        drop = [token] if drop is None else [*drop, token]
        if version not in ("1.1", "1.0"):
            raise ProtocolError(f"HTTP/{version} response")
        if te is not None and te != b"chunked":
            raise ProtocolError(f"unsupported transfer coding {te[:40]!r} from the server")
        if cl is not None and len(cl) > 19:
            raise ProtocolError("bad Content-Length from the server")
        if drop is not None:
            out = [out[0]] + [ln for ln in out[1:] if ln.partition(b":")[0].strip().lower() not in drop]
        self.code = code
        if self.cookie:
            out.append(self.cookie)
        if self.is_head or code == 204 or code == 304:
            if cl is not None:
                out.append(b"Content-Length: " + cl)
            self.bmode = _B_NONE
        elif te is not None:
            out.append(b"Transfer-Encoding: chunked")
            self.bmode = _B_CHUNKED
        elif cl is not None:
            out.append(b"Content-Length: " + cl)
            self.bmode = _B_LENGTH
        else:  # delimited by the server closing the connection: so is ours
            self.keep = False
            self.bmode = _B_EOF
        self.up_reuse = keep_alive
        req = self.queue[0]
        if not self.keep or not req.complete:
            out.append(b"Connection: close")
            self.keep = False
        elif self.v10:
            out.append(b"Connection: keep-alive")
        out.append(b"\r\n")
        self.sent_head = True
        self.out.append(b"\r\n".join(out))

    def flush(self) -> None:
        out = self.out
        if out and not self.closed:
            self.out = []
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]

    # --- ends of an exchange ---------------------------------------------------------------------------

    def _finish(self, reusable: bool) -> None:
        """The response is complete (`reusable`: the member's connection may serve another request)."""
        self.proxy.stats.end(self.sid, self.code, _perf() - self.started)
        self.busy = False
        pool = self.pool
        self.last = pool.clock
        req = self.queue.popleft()
        up, self.up = self.up, None
        if up is not None:
            if reusable and req.complete and not up.closed:
                if self.wpaused and up.transport is not None:
                    up.transport.resume_reading()
                pool.put(up)
            else:
                up.close()
        if self.rpause & 1:
            self.resume_reading(1)
        out = self.out
        if out and not self.closed:
            self.out = []
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]
        if not self.keep or not req.complete:
            self._close()
            return
        if self.in_head:  # a pipelined head was waiting: its deadline starts now
            self.head_started = self.pool.clock or 1e-9
        if self.queue or self.rpause:
            self._pump()
        if self.eof and not self.busy:
            self._close()

    def _fail(self, exc: BaseException, *, timeout: bool) -> None:
        """The member did not answer (or answered garbage): 502/504 if nothing was sent yet."""
        proxy = self.proxy
        up, self.up = self.up, None
        if up is not None:
            up.close()
        if self.sent_head:
            log.warning("balancer %s: server %s failed mid-response: %r", proxy.config.name, self.sid, exc)
            self.flush()
            self._abort_exchange(None)
            return
        log.warning("balancer %s: server %s (%s) failed: %r", proxy.config.name, self.sid, self.addr, exc)
        proxy.stats.end(self.sid, None, _perf() - self.started)
        self.busy = False
        self.out = []  # interim responses only
        req = self.queue.popleft()
        self._drop_parts(req)
        code = 504 if timeout else 502
        self._reply(
            code,
            f"{code} {_REASONS[code]}: server {self.sid} did not answer load balancer {proxy.config.name!r}\n",
            close=not self.keep or not req.complete,
        )
        if self.rpause & 3:
            self.resume_reading(self.rpause & 3)
        if not self.closed:
            self._pump()

    def _abort_exchange(self, reason: str | None) -> None:
        """Cut the client connection (the response cannot be completed or the request is broken)."""
        if reason:
            log.warning("balancer %s: %s", self.proxy.config.name, reason)
        if self.busy:
            self.busy = False
            self.proxy.stats.end(self.sid, None, _perf() - self.started)
        up, self.up = self.up, None
        if up is not None:
            up.close()
        self.queue.clear()
        self.closed = self.rclosed = True
        if self.transport is not None:
            self.transport.abort()

    def _reply(self, code: int, text: str, *, close: bool, extra: bytes = b"") -> None:
        if self.closed:
            return
        self.out.append(
            _status_response(
                code,
                text,
                close=close,
                keep_alive_10=self.v10,
                head=self.is_head and code != 400,
                extra=extra,
            )
        )
        self.flush()
        if close:
            self._close()

    def _close(self) -> None:
        """Close after what was written: a lingering close (as HAProxy and nginx do) sends our FIN, then
        reads and discards until the client's (or `LINGER_S`), so bytes the client sent that we did not
        read cannot turn into a reset that destroys our last response."""
        if not self.closed:
            self.flush()
            self.closed = self.rclosed = True
            self.queue.clear()
            transport = self.transport
            assert transport is not None
            if transport.can_write_eof() and not self.eof:
                transport.write_eof()
                self.linger_since = self.pool.clock or 1e-9
                if self.rpause:
                    self.rpause = 0
                    transport.resume_reading()
            else:
                transport.close()  # flushes what was written first

    # --- timeouts (called by the proxy's sweeper) ------------------------------------------------------

    def idle_close(self) -> None:
        """Close a connection with no exchange in progress (keep-alive timeout, shutdown)."""
        if not self.busy:
            self._close()

    def head_timeout(self) -> None:
        """The request head did not arrive within its deadline: 408 and close (HAProxy `timeout
        http-request`, nginx `client_header_timeout`)."""
        if not self.busy and not self.closed:
            self.rclosed = True
            self.is_head = False
            self._reply(408, "408 Request Timeout: the request head did not arrive in time\n", close=True)

    def send_timeout(self) -> None:
        """The client stopped reading its response: cut it, and free the member's connection (nginx
        `send_timeout`, HAProxy `timeout client`)."""
        self._abort_exchange(f"client {self.client_ip} stopped reading (send timeout)")
