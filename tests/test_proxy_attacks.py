"""The built-in balancer against hostile clients and broken servers: raw sockets, a real proxy, real backends.

Each attack of issue 10 ("The built-in balancer: strict HTTP/1.1 framing") is one test here; docs/security.md
(section "Built-in balancer") lists them. The member that accepts bare LF is Python's `http.server`, as in the
issue, so a smuggled request would really ride the pooled connection if the proxy let it through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancing import Member
from tests.backends import Backend
from tests.helpers import eventually

TOKEN = "attack-token"
ROOT = Path(__file__).resolve().parents[1]


# --- backends ------------------------------------------------------------------------------------------------


class LenientBackend:
    """Python's http.server (HTTP/1.1 keep-alive): accepts bare LF line ends, as the issue's member does.
    Answers every request with its path; `/slow` answers after 0.3 s. Records the paths it served."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                seen.append(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                if self.path == "/slow":
                    threading.Event().wait(0.3)
                body = f"path {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def member(self) -> Member:
        return Member(server_id="lenient", address=f"127.0.0.1:{self.port}")


@pytest.fixture
def lenient() -> Iterator[LenientBackend]:
    b = LenientBackend()
    b.thread.start()
    yield b
    b.server.shutdown()
    b.server.server_close()


async def canned_server(
    response: bytes | Callable[[asyncio.StreamWriter], Any],
) -> tuple[asyncio.Server, int]:
    """A member that answers every request head with `response` (bytes, or a coroutine writing it)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if isinstance(response, bytes):
                    writer.write(response)
                    await writer.drain()
                else:
                    await response(writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def start_proxy(members: list[Member], **kw: Any) -> BalancerProxy:
    kw.setdefault("token", TOKEN)
    proxy = BalancerProxy(ProxyConfig(name="attacks", listen_port=0, admin_port=0, members=members, **kw))
    await proxy.start()
    return proxy


@pytest.fixture
async def proxied(lenient: LenientBackend) -> AsyncIterator[BalancerProxy]:
    proxy = await start_proxy([lenient.member()])
    yield proxy
    await proxy.stop()


# --- raw client helpers ------------------------------------------------------------------------------------


async def send_raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and read until the proxy closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def get(port: int, path: str) -> bytes:
    return await send_raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


# --- request smuggling: CR, LF, NUL --------------------------------------------------------------------------

SMUGGLING = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Pad: 1\n\nGET /slow HTTP/1.1\r\nX-Smuggled: yes\r\n\r\n"


async def test_the_issues_smuggling_request_gets_400_and_nothing_rides_the_pooled_connection(
    proxied: BalancerProxy, lenient: LenientBackend
) -> None:
    assert (await get(proxied.port, "/warm")).endswith(b"path /warm")  # a pooled connection to the member
    raw = await send_raw(proxied.port, SMUGGLING)
    assert status_of(raw) == 400 and raw.count(b"HTTP/1.1") == 1
    victim = await get(proxied.port, "/victim")  # the next client gets its own answer, not /slow's
    assert status_of(victim) == 200 and victim.endswith(b"path /victim")
    assert "/slow" not in lenient.seen and "/a" not in lenient.seen


INJECTIONS = {
    "bare LF hides Transfer-Encoding": b"POST /inj HTTP/1.1\r\nHost: x\r\nX-Pad: 1\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "bare CR in a header value": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-Pad: 1\rX-Other: 2\r\n\r\n",
    "NUL in a header value": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-Pad: 1\x002\r\n\r\n",
    "LF in a header name": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-P\nad: 1\r\n\r\n",
    "NUL in a header name": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-P\x00ad: 1\r\n\r\n",
    "NUL in the target": b"GET /inj\x00x HTTP/1.1\r\nHost: x\r\n\r\n",
    "CR in the target": b"GET /inj\rx HTTP/1.1\r\nHost: x\r\n\r\n",
    "LF in the target": b"GET /inj\nx HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in the method": b"GE\x00T /inj HTTP/1.1\r\nHost: x\r\n\r\n",
    "LF in the method": b"GE\nT /inj HTTP/1.1\r\nHost: x\r\n\r\n",
}

FRAMING = {
    "chunk size 0x5": b"POST /inj HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size with a leading space": b"POST /inj HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b" 5\r\nhello\r\n0\r\n\r\n",
    "chunk size of 20 hex digits": b"POST /inj HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10000000000000000005\r\nhello\r\n0\r\n\r\n",
    "no CRLF after chunk data": b"POST /inj HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhelloXX0\r\n\r\n",
    "Content-Length of 20 digits": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\nhi",
    "Content-Length above 2**63": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\nhi",
    "HTTP/1.0 with Transfer-Encoding": b"POST /inj HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "HTTP/1.1 without Host": b"GET /inj HTTP/1.1\r\nX-A: 1\r\n\r\n",
    # before: chunked won and the connection closed after the exchange; now refused, as llhttp does
    "Content-Length with Transfer-Encoding": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}

# handled well before the strict parser, and still refused
STILL_REFUSED = {
    "Content-Length not a number": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
    "negative Content-Length": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello",
    "two different Content-Lengths": b"POST /inj HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "obs-fold": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    "space before the colon": b"GET /inj HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
    "two Host headers": b"GET /inj HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "not HTTP": b"NOT HTTP\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(INJECTIONS.values()), ids=list(INJECTIONS))
async def test_cr_lf_nul_in_method_target_or_header_gets_400(
    proxied: BalancerProxy, lenient: LenientBackend, raw: bytes
) -> None:
    answer = await send_raw(proxied.port, raw)
    assert status_of(answer) == 400
    assert not [p for p in lenient.seen if p.startswith("/inj")]


@pytest.mark.parametrize("raw", list(FRAMING.values()), ids=list(FRAMING))
async def test_bad_framing_gets_400_and_close(
    proxied: BalancerProxy, lenient: LenientBackend, raw: bytes
) -> None:
    answer = await send_raw(proxied.port, raw)  # returns only once the proxy closed the connection
    assert status_of(answer) == 400 and b"Connection: close" in answer
    if b"chunked" not in raw:  # a chunked head may reach the member before its broken body
        assert not [p for p in lenient.seen if p.startswith("/inj")]


@pytest.mark.parametrize("raw", list(STILL_REFUSED.values()), ids=list(STILL_REFUSED))
async def test_what_was_refused_before_still_is(
    proxied: BalancerProxy, lenient: LenientBackend, raw: bytes
) -> None:
    assert status_of(await send_raw(proxied.port, raw)) == 400
    assert not [p for p in lenient.seen if p.startswith("/inj")]


async def test_a_broken_chunk_after_the_head_was_forwarded_ends_the_exchange_with_400(
    backends: list[Backend],
) -> None:
    """The head and the first chunk reach the member (which waits for the whole body); the broken chunk
    size arrives later: 400, and the member's connection is closed, not reused."""
    proxied = await start_proxy([backends[0].member()])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        writer.write(b"POST /later HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"0x5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        assert status_of(answer) == 400
        assert all(s.active_connections == 0 for s in proxied.snapshot().servers)
        assert not proxied._pool.idle.get(backends[0].member().address)
    finally:
        writer.close()
        await proxied.stop()


async def test_an_oversized_head_gets_431(proxied: BalancerProxy) -> None:
    big = b"GET /big HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80)
    )
    assert status_of(await send_raw(proxied.port, big + b"\r\n")) == 431
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:  # one endless header line, sent in pieces
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(100):  # 400 KB: more than one read
            writer.write(b"v" * 4096)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        answer = b"HTTP/1.1 431 (reset while sending)"
    finally:
        writer.close()
    assert status_of(answer) == 431


# --- broken servers --------------------------------------------------------------------------------------------

BAD_RESPONSES = {
    "negative Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    "duplicated Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "two different Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    "unknown transfer coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "transfer coding list": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x-custom, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello",
    "no space after the status": b"HTTP/1.1 200OK\r\nContent-Length: 5\r\n\r\nhello",
    "not HTTP": b"HTTX/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "bare LF line ends": b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    "NUL in a header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("response", list(BAD_RESPONSES.values()), ids=list(BAD_RESPONSES))
async def test_a_malformed_server_response_gets_502(response: bytes) -> None:
    server, port = await canned_server(response)
    proxy = await start_proxy([Member(server_id="bad", address=f"127.0.0.1:{port}")])
    try:
        answer = await get(proxy.port, "/")
        assert status_of(answer) == 502 and b"server bad did not answer" in answer
        (srv,) = proxy.snapshot().servers
        assert srv.upstream_errors == 1 and srv.active_connections == 0
    finally:
        await proxy.stop()
        server.close()


async def test_a_response_to_head_with_a_body_is_not_reused() -> None:
    """A member that sends a body after a HEAD answer: the bytes never reach the next request."""
    server, port = await canned_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    proxy = await start_proxy([Member(server_id="m", address=f"127.0.0.1:{port}")])
    try:
        head = await send_raw(proxy.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")
        after = await get(proxy.port, "/")
        assert status_of(after) == 200 and after.endswith(b"hello") and after.count(b"HTTP/1.1") == 1
    finally:
        await proxy.stop()
        server.close()


# --- timeouts and limits -----------------------------------------------------------------------------------------


async def test_a_client_sending_its_head_one_byte_at_a_time_gets_408(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()], request_head_timeout_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

    async def trickle() -> None:
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([b]))
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
        assert status_of(answer) == 408 and b"Connection: close" in answer
        assert not sender.done()  # cut while it was still sending
    finally:
        sender.cancel()
        writer.close()
        await proxy.stop()


async def test_a_client_that_stops_reading_is_cut_and_frees_the_server() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        block = b"x" * 65536
        while True:
            writer.write(block)
            await writer.drain()

    server, port = await canned_server(endless)
    proxy = await start_proxy(
        [Member(server_id="big", address=f"127.0.0.1:{port}")], client_send_timeout_s=0.5
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
        sock.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(
            lambda: asyncio.sleep(0, proxy.active_connections("big")), lambda n: n == 1, 10, 0.02
        )
        # the client never reads: after the send timeout the proxy cuts it and the server's count drops
        await eventually(lambda: asyncio.sleep(0, proxy.active_connections("big")), lambda n: n == 0, 20, 0.1)
        assert not proxy._clients
    finally:
        sock.close()
        await proxy.stop()
        server.close()


async def test_client_connections_above_the_cap_get_503(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()], max_client_connections=2)
    held = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            held.append(writer)
        refused = await get(proxy.port, "/third")
        assert status_of(refused) == 503 and b"too many client connections" in refused
        held.pop().close()
        await eventually(lambda: asyncio.sleep(0, len(proxy._clients)), lambda n: n < 2, 10, 0.02)
        assert status_of(await get(proxy.port, "/again")) == 200
    finally:
        for w in held:
            w.close()
        await proxy.stop()


# --- sticky cookie, admin paths, admin token ---------------------------------------------------------------------


async def test_a_client_cannot_compute_the_sticky_cookie_of_a_server(backends: list[Backend]) -> None:
    forged = {
        # what anyone could compute before: an unkeyed hash of the server id
        hashlib.blake2b(b"s2", digest_size=8, person=b"poolctl-sticky").hexdigest(),
        hashlib.sha256(b"s2").hexdigest()[:32],
    }
    proxy = await start_proxy([b.member() for b in backends], sticky=True, sticky_cookie="LB")
    other = await start_proxy(
        [b.member() for b in backends], sticky=True, sticky_cookie="LB", token="another"
    )
    try:
        for cookie in forged:
            answers = [
                await send_raw(proxy.port, f"GET / HTTP/1.1\r\nHost: x\r\nCookie: LB={cookie}\r\nConnection: close\r\n\r\n".encode())
                for _ in range(3)
            ]  # fmt: skip
            assert all(b"Set-Cookie: LB=" in a for a in answers)  # not honoured: re-balanced
            assert {a.rsplit(b"\r\n\r\n", 1)[1].split()[0] for a in answers} == {b"s0", b"s1", b"s2"}
        # the same server gets a different cookie under another balancer secret
        cookies = []
        for p in (proxy, other):
            raw = await get(p.port, "/")
            cookies.append(raw.split(b"Set-Cookie: LB=", 1)[1].split(b";", 1)[0])
            assert raw.rsplit(b"\r\n\r\n", 1)[1].startswith(b"s0")
        assert cookies[0] != cookies[1]
    finally:
        await proxy.stop()
        await other.stop()


@pytest.fixture
async def local_server(tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """A real local server process (localserver/server.py), whose /admin/exit ends it."""
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "poolctl.localserver", "--server-id", "adm", "--state-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    info_path = tmp_path / "servers" / "adm.json"

    async def ready() -> dict[str, Any] | None:
        assert proc.poll() is None, "the local server exited during start-up"
        try:
            data = json.loads(info_path.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("pid") == proc.pid else None

    try:
        info = await eventually(ready, lambda d: d is not None, 30, 0.05)
        assert info is not None
        yield proc, info["url"].removeprefix("http://")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


ADMIN_TARGETS = [
    "/admin/exit",
    "/admin/health",
    "/%61dmin/health",
    "/%2561dmin/health",
    "//admin/health",
    "/x/../admin/health",
    "/./admin/health",
    "/ADMIN/health",
    "/admin;x/health",
    "/admin",
    "http://x/admin/health",
]


async def test_admin_paths_of_a_local_server_are_refused_through_a_balancer(
    local_server: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, address = local_server
    proxy = await start_proxy([Member(server_id="adm", address=address)])
    try:
        for target in ADMIN_TARGETS:
            body = b'{"healthy": false, "code": 3}'
            raw = await send_raw(
                proxy.port,
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (target.encode(), len(body), body),
            )
            assert status_of(raw) == 403, target
        assert proc.poll() is None  # /admin/exit never reached it
        state = await send_raw(
            int(address.rpartition(":")[2]),
            b"GET /admin/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert status_of(state) == 200 and json.loads(state.split(b"\r\n\r\n", 1)[1])["healthy"] is True
        assert status_of(await get(proxy.port, "/administrator")) == 200  # only /admin and below
    finally:
        await proxy.stop()


@pytest.mark.parametrize("value", [b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer \xe9", b"\xff\xfe"])
async def test_a_non_ascii_authorization_header_on_the_admin_port_gets_401(value: bytes) -> None:
    proxy = await start_proxy([])
    try:
        assert proxy.admin_port is not None
        raw = await send_raw(
            proxy.admin_port,
            b"GET /admin/members HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + value
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert status_of(raw) == 401
    finally:
        await proxy.stop()
