"""The built-in balancer's hot path: a raw asyncio `Protocol` HTTP/1.1 reverse proxy.

One `ClientConn` per client connection (keep-alive, pipelined requests answered in order) and one
`UpstreamConn` per connection to a member, kept in a per-address pool of idle keep-alive connections.
Parsing is deliberately minimal: the request line and headers (up to `MAX_HEAD` bytes) are split once,
the few headers the proxy cares about are looked up in a dict, all others are forwarded as the very
bytes the client sent. Bodies (Content-Length or chunked, both ways) are streamed through unchanged;
chunked ones are only scanned to find where the message ends. Flow control follows the transports'
pause/resume_writing callbacks, so a slow reader on one side pauses reading on the other.

Every pick goes through `Balancing.pick` and every request through `ProxyStats.begin/end` (the objects
the admin endpoint reads), exactly as the aiohttp-based data path did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from poolctl.domain.balancing import NoHealthyMember

if TYPE_CHECKING:
    from poolctl.balancer.proxy import BalancerProxy

log = logging.getLogger("poolctl.balancer")

MAX_HEAD = 64 * 1024  # request/response line + headers
HIGH_WATER = 256 * 1024  # buffered bytes at which reading from the other side pauses
MAX_IDLE_PER_ADDRESS = 512

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
_WS = (32, 9)

# response framing states
_R_HEAD, _R_LENGTH, _R_CHUNKED, _R_EOF = range(4)

_REASONS = {
    400: "Bad Request",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class ProtocolError(ValueError):
    pass


class ChunkScanner:
    """Finds the end of a chunked body without decoding it (the bytes are forwarded as they are)."""

    __slots__ = ("state", "remaining", "line")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 chunk data (+ CRLF), 2 trailer lines
        self.remaining = 0
        self.line = b""

    def scan(self, data: bytes, pos: int = 0) -> int:
        """Advance over `data[pos:]`; return the index just past the message end, or -1 (need more)."""
        n = len(data)
        while pos < n:
            if self.state == 1:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = 0
                continue
            i = data.find(b"\n", pos)
            if i < 0:
                self.line += data[pos:]
                if len(self.line) > 8192:
                    raise ProtocolError("chunk header line too long")
                return -1
            line = self.line + data[pos:i] if self.line else data[pos:i]
            self.line = b""
            pos = i + 1
            if self.state == 0:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                if size < 0 or not size_text.isalnum():
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
                if size == 0:
                    self.state = 2
                else:
                    self.state = 1
                    self.remaining = size + 2  # the data and its CRLF
            elif not line.strip():  # the empty line that ends the trailers
                self.state = 3
                return pos
        return -1


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


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to a member; lent to one `ClientConn` at a time."""

    __slots__ = ("pool", "addr", "transport", "owner", "closed", "idle_since", "last")

    def __init__(self, pool: UpstreamPool, addr: str) -> None:
        self.pool = pool
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.owner: ClientConn | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            self.last = self.pool.clock
            owner.up_data(data)
        else:  # an idle connection must not speak: drop it
            self.close()

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


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


class ClientConn(asyncio.Protocol):
    """One client connection: parses requests, picks a member, relays the exchange, keeps stats."""

    __slots__ = (
        "proxy",
        "pool",
        "transport",
        "buf",
        "busy",
        "closed",
        "client_ip",
        "xff_ip",
        "last",
        "rpause",
        "wpaused",
        # the exchange in progress
        "up",
        "addr",
        "sid",
        "started",
        "req_head",
        "req_body",
        "req_left",
        "req_chunks",
        "pending",
        "pending_size",
        "fresh",
        "is_head",
        "cookie",
        "keep",
        "v10",
        "resp",
        "rbuf",
        "r_left",
        "r_chunks",
        "code",
        "sent_head",
        "up_reuse",
        "retry",
        "eof",
    )

    def __init__(self, proxy: BalancerProxy) -> None:
        self.proxy = proxy
        self.pool = proxy._pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False
        self.closed = False
        self.client_ip = ""
        self.xff_ip = b""
        self.last = 0.0
        self.rpause = 0  # bit 1: upstream write buffer full; 2: connect pending; 4: pipelined backlog
        self.wpaused = False
        self.up: UpstreamConn | None = None
        self.addr = ""
        self.sid = ""
        self.started = 0.0
        self.req_head = b""
        self.req_body = 0  # 0 none/done, 1 Content-Length, 2 chunked
        self.req_left = 0
        self.req_chunks: ChunkScanner | None = None
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.fresh = False
        self.is_head = False
        self.cookie = b""
        self.keep = True
        self.v10 = False
        self.resp = _R_HEAD
        self.rbuf = b""
        self.r_left = 0
        self.r_chunks: ChunkScanner | None = None
        self.code = 0
        self.sent_head = False
        self.up_reuse = False
        self.retry = False
        self.eof = False

    # --- client transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.xff_ip = self.client_ip.encode()
        self.last = self.pool.clock
        self.proxy._clients.add(self)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.last = self.pool.clock
        if self.req_body:
            try:
                data = self._feed_body(data)
            except ProtocolError as e:
                self._abort_exchange(f"bad request body: {e}")
                return
            if not data:
                return
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._next()
        elif len(self.buf) > HIGH_WATER:
            self.pause_reading(4)

    def eof_received(self) -> bool:
        # a half-closed client may still be waiting for its response (not possible over TLS)
        if self.busy and self.proxy.ssl_context is None:
            self.eof = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy._clients.discard(self)
        if self.busy:
            self.busy = False
            up, self.up = self.up, None
            if up is not None:
                up.close()
            self.proxy.stats.end(self.sid, None, _perf() - self.started)
        self.buf = b""

    def pause_writing(self) -> None:
        self.wpaused = True
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

    # --- requests ------------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next buffered request, if its head is complete."""
        while not self.busy and not self.closed:
            buf = self.buf
            if not buf:
                break
            if buf[:2] == b"\r\n":  # tolerated stray CRLFs between requests
                self.buf = buf.lstrip(b"\r\n")
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._reply(431, "431 Request Header Fields Too Large\n", close=True)
                break
            if end > MAX_HEAD:
                self._reply(431, "431 Request Header Fields Too Large\n", close=True)
                break
            self.buf = buf[end + 4 :]
            self._start(buf[:end])
        if self.rpause & 4 and len(self.buf) <= HIGH_WATER:
            self.resume_reading(4)

    def _start(self, head: bytes) -> None:
        proxy = self.proxy
        self.is_head = False
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            self._reply(400, "400 Bad Request: malformed request line\n", close=True)
            return
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep, v10 = True, False
        elif version == b"HTTP/1.0":
            keep, v10 = False, True
        else:
            self._reply(505, "505 HTTP Version Not Supported\n", close=True)
            return
        self.keep, self.v10 = keep, v10
        self.is_head = method == b"HEAD"
        cl: int | None = None
        te: bytes | None = None
        host: bytes | None = None
        xff: bytes | None = None
        cookie: str | None = None
        expect = False
        drop: list[bytes] | None = None
        sticky_name = proxy._cookie_name if proxy._sticky else None
        kinds = _REQ_KINDS
        out = [b""]
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            kind = kinds.get(name.lower())
            if kind is None:
                if not colon or not name or name[-1] in _WS or name[0] in _WS:
                    self._reply(400, "400 Bad Request: malformed header line\n", close=True)
                    return
                out.append(line)
                continue
            value = value.strip()
            if kind == _COOKIE:
                out.append(line)
                if sticky_name is not None and cookie is None:
                    for part in value.split(b";"):
                        k, eq, v = part.partition(b"=")
                        if eq and k.strip() == sticky_name:
                            cookie = v.strip().strip(b'"').decode("latin-1")
                            break
            elif kind == _HOST:
                if host is not None:
                    self._reply(400, "400 Bad Request: more than one Host header\n", close=True)
                    return
                host = value
                out.append(line)
            elif kind == _CL:
                if not value.isdigit() or (cl is not None and int(value) != cl):
                    self._reply(400, "400 Bad Request: bad Content-Length\n", close=True)
                    return
                cl = int(value)
            elif kind == _TE:
                te = value.lower() if te is None else te + b", " + value.lower()
            elif kind == _CONN:
                for token in _conn_tokens(value):
                    if token == b"close":
                        keep = False
                    elif token == b"keep-alive":
                        keep = keep or v10
                    elif token and token not in kinds:
                        drop = [token] if drop is None else [*drop, token]
            elif kind == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif kind == _EXPECT:
                expect = value.lower() == b"100-continue"
        if te is not None:
            if te != b"chunked":
                self._reply(
                    501, "501 Not Implemented: only chunked transfer coding is supported\n", close=True
                )
                return
            if cl is not None:  # both: chunked wins, and this connection is not trusted further
                cl, keep = None, False
        if drop is not None:
            out = [out[0]] + [ln for ln in out[1:] if ln.partition(b":")[0].strip().lower() not in drop]
        self.keep = keep

        try:
            pick = proxy.balancing.pick(self.client_ip, cookie, proxy.stats.active)
        except NoHealthyMember:
            stats = proxy.stats
            stats.requests += 1
            stats.no_member += 1
            has_body = te is not None or bool(cl)
            self._reply(
                502,
                f"502 Bad Gateway: load balancer {proxy.config.name!r} has no server in rotation\n",
                close=has_body or not keep,
                extra=b"Retry-After: 1\r\n",
            )
            return

        member = pick.member
        addr = member.address
        out[0] = lines[0]
        out.append(b"X-Forwarded-For: " + (xff + b", " + self.xff_ip if xff else self.xff_ip))
        out.append(proxy._proto_line)
        if host is not None:
            out.append(b"X-Forwarded-Host: " + host)
        else:
            out.append(b"Host: " + addr.encode())
        if te is not None:
            out.append(b"Transfer-Encoding: chunked")
            self.req_body = 2
            self.req_chunks = ChunkScanner()
        elif cl is not None:
            out.append(b"Content-Length: %d" % cl)
            if cl:
                self.req_body = 1
                self.req_left = cl
        if v10:
            out.append(b"Connection: keep-alive")
        out.append(b"\r\n")
        self.req_head = b"\r\n".join(out)
        self.retry = te is None and not cl
        self.cookie = b"" if pick.set_cookie is None else proxy._set_cookie_line(pick.set_cookie)
        self.addr = addr
        self.sid = sid = member.server_id
        self.resp = _R_HEAD
        self.rbuf = b""
        self.code = 0
        self.sent_head = False
        self.busy = True
        proxy.stats.begin(sid)
        self.started = _perf()
        if expect and self.req_body and not v10:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

        up = self.pool.get(addr)
        if up is not None:
            self.fresh = False
            self.pending = None
            self._attach(up)
            up.last = self.pool.clock
            up.transport.write(self.req_head)  # type: ignore[union-attr]
        else:
            self.fresh = True
            self.pending = []
            self.pending_size = 0
            self.pool.connect(self, addr)
        if self.req_body and self.buf:
            buf, self.buf = self.buf, b""
            try:
                self.buf = self._feed_body(buf)
            except ProtocolError as e:
                self._abort_exchange(f"bad request body: {e}")

    def _feed_body(self, data: bytes) -> bytes:
        """Forward the request body part of `data`; return what follows it (the next request)."""
        if self.req_body == 1:
            n = self.req_left
            if len(data) <= n:
                chunk, rest = data, b""
            else:
                chunk, rest = data[:n], data[n:]
            self.req_left = n - len(chunk)
            if self.req_left == 0:
                self.req_body = 0
        else:
            end = self.req_chunks.scan(data)  # type: ignore[union-attr]
            if end < 0:
                chunk, rest = data, b""
            else:
                chunk, rest = data[:end], data[end:]
                self.req_body = 0
        up = self.up
        if up is not None:
            up.last = self.pool.clock
            up.transport.write(chunk)  # type: ignore[union-attr]
        elif self.pending is not None:
            self.pending.append(chunk)
            self.pending_size += len(chunk)
            if self.pending_size > HIGH_WATER:
                self.pause_reading(2)
        return rest

    def _attach(self, up: UpstreamConn) -> None:
        self.up = up
        up.owner = self
        if self.wpaused and up.transport is not None:
            up.transport.pause_reading()

    # --- upstream events -------------------------------------------------------------------------------

    def up_connected(self, up: UpstreamConn) -> None:
        if not self.busy or self.closed or self.pending is None or self.up is not None:
            self.pool.put(up)  # the client is gone (or the exchange ended): keep the connection
            return
        pending, self.pending = self.pending, None
        self._attach(up)
        up.transport.write(b"".join([self.req_head, *pending]) if pending else self.req_head)  # type: ignore[union-attr]
        if self.rpause & 2:
            self.resume_reading(2)

    def up_connect_failed(self, addr: str, exc: BaseException) -> None:
        if not self.busy or self.closed or self.pending is None:
            return
        self.pending = None
        self._fail(exc, timeout=isinstance(exc, TimeoutError))

    def up_lost(self, up: UpstreamConn, exc: Exception | None) -> None:
        if up is not self.up:
            return
        self.up = None
        if self.resp == _R_EOF:  # a close-delimited body ends here
            self._finish(reusable=False)
            return
        if self.resp == _R_HEAD and not self.rbuf and not self.fresh and self.retry:
            # a pooled connection the member closed while idle: retry once on a fresh one
            self.fresh = True
            self.pending = []
            self.pending_size = 0
            self.pool.connect(self, self.addr)
            return
        self._fail(exc or ConnectionResetError("connection closed by the server"), timeout=False)

    def up_timeout(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.close()
        self._fail(TimeoutError("no answer within the read timeout"), timeout=True)

    def up_data(self, data: bytes) -> None:
        resp = self.resp
        if resp == _R_LENGTH:
            n = self.r_left
            if len(data) < n:
                self.r_left = n - len(data)
                self.transport.write(data)  # type: ignore[union-attr]
                return
            self.transport.write(data if len(data) == n else data[:n])  # type: ignore[union-attr]
            self._finish(reusable=self.up_reuse and len(data) == n)
            return
        if resp == _R_HEAD:
            self._up_head(data)
            return
        if resp == _R_CHUNKED:
            try:
                end = self.r_chunks.scan(data)  # type: ignore[union-attr]
            except ProtocolError as e:
                self._abort_exchange(f"server sent a bad chunked body: {e}")
                return
            if end < 0:
                self.transport.write(data)  # type: ignore[union-attr]
                return
            self.transport.write(data if end == len(data) else data[:end])  # type: ignore[union-attr]
            self._finish(reusable=self.up_reuse and end == len(data))
            return
        self.transport.write(data)  # type: ignore[union-attr]  # _R_EOF

    def _up_head(self, data: bytes) -> None:
        rbuf = self.rbuf + data if self.rbuf else data
        end = rbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(rbuf) > MAX_HEAD:
                self._fail(ProtocolError("response head too large"), timeout=False)
            else:
                self.rbuf = rbuf
            return
        self.rbuf = b""
        lines = rbuf[:end].split(b"\r\n")
        status = lines[0]
        try:
            if status[:5] != b"HTTP/" or status[8:9] != b" ":
                raise ValueError
            code = int(status[9:12])
        except ValueError:
            self._fail(ProtocolError(f"bad status line {status[:40]!r}"), timeout=False)
            return
        version = status[:8]
        if 100 <= code < 200:
            if code == 101:
                self._fail(ProtocolError("unexpected protocol switch"), timeout=False)
                return
            if not self.v10:  # interim responses (103 Early Hints...) go through to HTTP/1.1 clients
                self.transport.write(rbuf[: end + 4])  # type: ignore[union-attr]
            if len(rbuf) > end + 4:
                self._up_head(rbuf[end + 4 :])
            return
        reuse = version == b"HTTP/1.1"
        cl: int | None = None
        chunked = False
        kinds = _RESP_KINDS
        out = [b"HTTP/1.1" + status[8:]]
        drop: list[bytes] | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            kind = kinds.get(name.lower())
            if kind is None:
                out.append(line)
            elif kind == _CL:
                try:
                    cl = int(value.strip())
                except ValueError:
                    self._fail(ProtocolError("bad Content-Length from the server"), timeout=False)
                    return
            elif kind == _TE:
                chunked = value.strip().lower().endswith(b"chunked")
            elif kind == _CONN:
                for token in _conn_tokens(value):
                    if token == b"close":
                        reuse = False
                    elif token == b"keep-alive":
                        reuse = True
                    elif token and token not in kinds:
                        drop = [token] if drop is None else [*drop, token]
        if drop is not None:
            out = [out[0]] + [ln for ln in out[1:] if ln.partition(b":")[0].strip().lower() not in drop]
        self.code = code
        if self.cookie:
            out.append(self.cookie)
        body = rbuf[end + 4 :]
        if self.is_head or code == 204 or code == 304:
            if cl is not None:
                out.append(b"Content-Length: %d" % cl)
            self._send_head(out, b"")
            self._finish(reusable=reuse and not body)
            return
        if chunked:
            out.append(b"Transfer-Encoding: chunked")
            self.resp = _R_CHUNKED
            self.r_chunks = ChunkScanner()
            self.up_reuse = reuse
            try:
                end = self.r_chunks.scan(body)
            except ProtocolError as e:
                self._fail(e, timeout=False)
                return
            if end < 0:
                self._send_head(out, body)
            else:
                self._send_head(out, body[:end])
                self._finish(reusable=reuse and end == len(body))
            return
        if cl is not None:
            out.append(b"Content-Length: %d" % cl)
            self.up_reuse = reuse
            if len(body) >= cl:
                self._send_head(out, body if len(body) == cl else body[:cl])
                self._finish(reusable=reuse and len(body) == cl)
            else:
                self.resp = _R_LENGTH
                self.r_left = cl - len(body)
                self._send_head(out, body)
            return
        # delimited by the server closing the connection: so is ours
        self.keep = False
        self.resp = _R_EOF
        self._send_head(out, body)

    def _send_head(self, out: list[bytes], body: bytes) -> None:
        if not self.keep or self.req_body:
            out.append(b"Connection: close")
            self.keep = False
        elif self.v10:
            out.append(b"Connection: keep-alive")
        self.sent_head = True
        out.append(b"")
        out.append(body)
        self.transport.write(b"\r\n".join(out))  # type: ignore[union-attr]

    # --- ends of an exchange ---------------------------------------------------------------------------

    def _finish(self, reusable: bool) -> None:
        self.proxy.stats.end(self.sid, self.code, _perf() - self.started)
        self.busy = False
        self.resp = _R_HEAD
        self.last = self.pool.clock
        up, self.up = self.up, None
        if up is not None:
            up.owner = None
            if reusable and not self.req_body and not up.closed:
                if self.wpaused and up.transport is not None:
                    up.transport.resume_reading()
                self.pool.put(up)
            else:
                up.close()
        if self.rpause & 1:
            self.resume_reading(1)
        if not self.keep or self.req_body:
            self._close()
        elif self.buf:
            self._next()
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
            self._abort_exchange(None)
            return
        log.warning("balancer %s: server %s (%s) failed: %r", proxy.config.name, self.sid, self.addr, exc)
        proxy.stats.end(self.sid, None, _perf() - self.started)
        self.busy = False
        self.resp = _R_HEAD
        self.pending = None
        code = 504 if timeout else 502
        self._reply(
            code,
            f"{code} {_REASONS[code]}: server {self.sid} did not answer load balancer {proxy.config.name!r}\n",
            close=not self.keep or bool(self.req_body),
        )
        if self.rpause & 3:
            self.resume_reading(self.rpause & 3)
        if self.buf and not self.closed:
            self._next()

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
        self.pending = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _reply(self, code: int, text: str, *, close: bool, extra: bytes = b"") -> None:
        if self.closed:
            return
        self.transport.write(  # type: ignore[union-attr]
            _status_response(
                code,
                text,
                close=close,
                keep_alive_10=self.v10,
                head=self.is_head and code != 400,
                extra=extra,
            )
        )
        if close:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.buf = b""
            self.transport.close()  # type: ignore[union-attr]  # flushes what was written first

    def idle_close(self) -> None:
        """Close a connection with no exchange in progress (keep-alive timeout, shutdown)."""
        if not self.busy:
            self._close()
