"""End-to-end tests of the built-in balancer: real HTTP backends, the real proxy, the builtin driver."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from poolctl.activities.balancers.base import BalancerAuthError, UnknownMemberError
from poolctl.activities.balancers.builtin import BuiltinBalancerDriver
from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancing import Member, MemberState
from tests.backends import Backend, who

TOKEN = "test-token"


async def start_proxy(members: list[Member], **kw: object) -> BalancerProxy:
    proxy = BalancerProxy(
        ProxyConfig(name="test", listen_port=0, admin_port=0, token=TOKEN, members=members, **kw)  # type: ignore[arg-type]
    )
    await proxy.start()
    return proxy


async def test_round_robin_and_forwarding(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends])
    try:
        async with httpx.AsyncClient() as c:
            seen = await who(c, proxy.url, 9)
            assert seen == ["s0", "s1", "s2"] * 3
            r = await c.post(
                proxy.url + "/p/a%2Fb?x=1&y=2", content=b"abc", headers={"X-Forwarded-For": "9.9.9.9"}
            )
            assert r.text.endswith("POST /p/a%2Fb?x=1&y=2 3")
        h = backends[0].seen_headers[-1]
        assert h["X-Forwarded-For"] == "9.9.9.9, 127.0.0.1"
        assert h["X-Forwarded-Proto"] == "http"
        assert h["Host"] == f"127.0.0.1:{proxy.port}"
        stats = proxy.snapshot()
        assert stats.requests == 10
        assert {s.server_id: s.responses_2xx for s in stats.servers} == {"s0": 4, "s1": 3, "s2": 3}
    finally:
        await proxy.stop()


async def test_large_bodies_stream_both_ways_and_head(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()], max_buffered_body=1024)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(proxy.url + "/big")
            assert r.status_code == 200 and len(r.content) == 48 * 65536 and r.content[-1:] == b"V"
            r = await c.post(proxy.url + "/up", content=b"x" * (3 << 20))
            assert r.text.endswith(f"POST /up {3 << 20}")

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"y" * 1000

            r = await c.post(proxy.url + "/up", content=chunks())
            assert r.text.endswith("POST /up 5000")
            r = await c.head(proxy.url + "/hello")
            assert r.status_code == 200 and r.content == b""
            assert int(r.headers["content-length"]) > 0
    finally:
        await proxy.stop()


async def test_weighted_distribution(backends: list[Backend]) -> None:
    proxy = await start_proxy(
        [backends[0].member(3), backends[1].member(1), backends[2].member(1)], algorithm="weighted"
    )
    try:
        async with httpx.AsyncClient() as c:
            seen = await who(c, proxy.url, 10)
        assert Counter(seen) == {"s0": 6, "s1": 2, "s2": 2}
        assert "s0s0s0" not in "".join(seen)
    finally:
        await proxy.stop()


async def test_ip_hash_keeps_a_client_on_one_server(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends], algorithm="ip_hash")
    try:
        async with httpx.AsyncClient() as c:
            assert len(set(await who(c, proxy.url, 6))) == 1
    finally:
        await proxy.stop()


async def test_least_connections_avoids_the_busy_server(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends[:2]], algorithm="least_connections")
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            slow = asyncio.create_task(c.get(proxy.url + "/slow"))
            await asyncio.wait_for(backends[0].slow_started.wait(), 5)
            assert await who(c, proxy.url, 4) == ["s1"] * 4
            backends[0].release.set()
            assert (await slow).text == "s0 slow done"
    finally:
        await proxy.stop()


async def test_sticky_cookie_keeps_client_on_its_server(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends], sticky=True, sticky_cookie="LB")
    try:
        async with httpx.AsyncClient() as c:
            r = await c.get(proxy.url + "/")
            server = r.text.split()[0]
            cookie = r.cookies["LB"]
            assert "HttpOnly" in r.headers["set-cookie"]
        for _ in range(6):
            async with httpx.AsyncClient(cookies={"LB": cookie}) as c:
                r = await c.get(proxy.url + "/")
                assert r.text.split()[0] == server
                assert "set-cookie" not in r.headers
        # the server leaves rotation: the client is re-balanced and gets a new cookie
        proxy.set_members(
            [
                b.member(state=MemberState.OUT if b.server_id == server else MemberState.IN_ROTATION)
                for b in backends
            ]
        )
        async with httpx.AsyncClient(cookies={"LB": cookie}) as c:
            r = await c.get(proxy.url + "/")
            assert r.text.split()[0] != server
            assert r.cookies["LB"] != cookie
    finally:
        await proxy.stop()


async def test_member_out_of_rotation_gets_nothing_and_503_when_none(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends])
    assert proxy.admin_url is not None
    try:
        async with BuiltinBalancerDriver(proxy.admin_url, TOKEN) as driver, httpx.AsyncClient() as c:
            desired = [backends[0].member(), backends[1].member(state=MemberState.OUT), backends[2].member()]
            res = await driver.sync_members(desired)
            assert res.updated == ["s1"] and not res.added and not res.removed
            again = await driver.sync_members(desired)
            assert not again.changed
            assert "s1" not in await who(c, proxy.url, 10)
            await driver.sync_members([b.member(state=MemberState.OUT) for b in backends])
            r = await c.get(proxy.url + "/")
            assert r.status_code == 503 and "no server in rotation" in r.text
            # back: a new member added, one removed
            res = await driver.sync_members([backends[2].member()])
            assert res.removed == ["s0", "s1"] and res.updated == ["s2"]
            assert set(await who(c, proxy.url, 4)) == {"s2"}
            stats = await driver.stats()
            assert stats.no_member_responses == 1
            assert stats.success_rate is not None and stats.success_rate < 1
    finally:
        await proxy.stop()


async def test_drain_finishes_in_flight_then_gets_nothing(backends: list[Backend]) -> None:
    proxy = await start_proxy([b.member() for b in backends[:2]])
    assert proxy.admin_url is not None
    try:
        async with (
            BuiltinBalancerDriver(proxy.admin_url, TOKEN) as driver,
            httpx.AsyncClient(timeout=10) as c,
        ):
            slow = asyncio.create_task(c.get(proxy.url + "/slow"))  # round robin: first pick is s0
            await asyncio.wait_for(backends[0].slow_started.wait(), 5)
            assert await driver.active_connections("s0") == 1
            await driver.drain("s0")
            members = {m.server_id: m for m in await driver.members()}
            assert members["s0"].state is MemberState.DRAINING and members["s0"].active_connections == 1
            assert await who(c, proxy.url, 5) == ["s1"] * 5
            assert not await driver.wait_drained("s0", timeout_s=0.2, poll_interval_s=0.05)
            backends[0].release.set()
            r = await slow
            assert r.status_code == 200 and r.text == "s0 slow done"
            assert await driver.wait_drained("s0", timeout_s=5, poll_interval_s=0.05)
            assert await who(c, proxy.url, 3) == ["s1"] * 3
            with pytest.raises(UnknownMemberError):
                await driver.drain("nope")
    finally:
        await proxy.stop()


async def test_admin_requires_token_and_metrics(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()])
    assert proxy.admin_url is not None
    try:
        async with httpx.AsyncClient() as c:
            for method, path in [
                ("GET", "/admin/members"),
                ("PUT", "/admin/members"),
                ("GET", "/admin/stats"),
                ("POST", "/admin/members/s0/drain"),
            ]:
                r = await c.request(method, proxy.admin_url + path)
                assert r.status_code == 401, path
                r = await c.request(method, proxy.admin_url + path, headers={"Authorization": "Bearer wrong"})
                assert r.status_code == 401, path
            r = await c.put(
                proxy.admin_url + "/admin/members",
                json={"members": [{"server_id": "x", "address": "nope"}]},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 400 and "host:port" in r.text
            await c.get(proxy.url + "/")
            m = await c.get(proxy.admin_url + "/metrics")
            assert m.status_code == 200
            assert 'poolctl_lb_server_responses_total{balancer="test",server="s0",code="2xx"} 1' in m.text
            assert 'poolctl_lb_server_request_duration_seconds_count{balancer="test",server="s0"} 1' in m.text
        async with BuiltinBalancerDriver(proxy.admin_url, "wrong") as bad:
            with pytest.raises(BalancerAuthError):
                await bad.members()
    finally:
        await proxy.stop()


async def test_unreachable_server_gives_502_and_counts_an_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    proxy = await start_proxy([Member(server_id="dead", address=f"127.0.0.1:{dead_port}")])
    try:
        async with httpx.AsyncClient() as c:
            r = await c.get(proxy.url + "/")
        assert r.status_code == 502 and "server dead did not answer" in r.text
        (srv,) = proxy.snapshot().servers
        assert srv.upstream_errors == 1 and srv.active_connections == 0 and srv.success_rate == 0
    finally:
        await proxy.stop()


def test_admin_must_be_loopback_and_have_a_token() -> None:
    with pytest.raises(ValueError, match="loopback"):
        BalancerProxy(ProxyConfig(admin_host="0.0.0.0", token="t"))
    with pytest.raises(ValueError, match="token"):
        BalancerProxy(ProxyConfig(token=""))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_termination(backends: list[Backend], certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    proxy = await start_proxy([backends[0].member()], certfile=str(cert), keyfile=str(key), sticky=True)
    try:
        assert proxy.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=ctx) as c:
            r = await c.get(proxy.url + "/secure")
            assert r.status_code == 200 and r.text.startswith("s0 GET /secure")
            assert "Secure" in r.headers["set-cookie"]
        assert backends[0].seen_headers[-1]["X-Forwarded-Proto"] == "https"
        async with httpx.AsyncClient() as c:  # default trust store: the self-signed certificate is refused
            with pytest.raises(httpx.ConnectError):
                await c.get(proxy.url + "/secure")
    finally:
        await proxy.stop()


async def test_command_line_runs_a_balancer(backends: list[Backend]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.balancer", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--token", TOKEN, "--algorithm", "weighted", "--member", f"s0=127.0.0.1:{backends[0].port}@2",
        "--member", f"s1=127.0.0.1:{backends[1].port}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "listening", line
        url, admin = line[1], line[3]
        async with httpx.AsyncClient() as c:
            assert Counter(await who(c, url, 6)) == {"s0": 4, "s1": 2}
        async with BuiltinBalancerDriver(admin, TOKEN) as driver:
            assert [m.weight for m in await driver.members()] == [2, 1]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


# --- the raw-protocol data path: keep-alive, pipelining, pooling, framing, timeouts ---------------------


async def raw_exchange(port: int, data: bytes | list[bytes], *, until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in [data] if isinstance(data, bytes) else data:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        if until_eof:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse back-to-back Content-Length responses (what the proxy sends for the test backends)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


async def test_pipelined_requests_are_answered_in_order_over_pooled_connections(
    backends: list[Backend],
) -> None:
    proxy = await start_proxy([b.member() for b in backends[:2]], sticky=True)
    try:
        pipelined = b"".join(
            f"GET /p{i} HTTP/1.1\r\nHost: x\r\n{'Connection: close' if i == 5 else 'X-N: 1'}\r\n\r\n".encode()
            for i in range(6)
        )
        responses = split_responses(await raw_exchange(proxy.port, pipelined))
        assert [r[2].decode().split()[2] for r in responses] == [f"/p{i}" for i in range(6)]
        assert [r[2].decode().split()[0] for r in responses] == ["s0", "s1"] * 3
        assert all("POOLCTL_SRV=" in r[1]["set-cookie"] for r in responses)
        assert responses[-1][1]["connection"] == "close"
        # a second client connection, sent byte by byte: the pooled upstream connections are reused
        again = split_responses(
            await raw_exchange(proxy.port, [bytes([b]) for b in pipelined[:40]] + [pipelined[40:]])
        )
        assert len(again) == 6
        assert proxy._pool.connects == 2  # one per member for 12 requests
        assert proxy.snapshot().requests == 12
        assert all(s.active_connections == 0 for s in proxy.snapshot().servers)
    finally:
        await proxy.stop()


async def test_chunked_upload_split_across_packets_and_http10(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()])
    try:
        body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        parts = [head + body[:3]] + [body[i : i + 4] for i in range(3, len(body), 4)]
        ((status, headers, text),) = split_responses(await raw_exchange(proxy.port, parts))
        assert status == 200 and text.decode() == "s0 POST /up 11"
        assert backends[0].seen_headers[-1]["Transfer-Encoding"] == "chunked"
        # HTTP/1.0 without keep-alive: one response, then the proxy closes
        ((status, headers, text),) = split_responses(
            await raw_exchange(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
        )
        assert status == 200 and text.decode().startswith("s0 GET /old")
        # HTTP/1.0 with keep-alive: the connection stays open
        raw = await raw_exchange(
            proxy.port, b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", until_eof=False
        )
        assert b"Connection: keep-alive" in raw and raw.endswith(b"s0 GET /ka 0")
        # garbage gets a 400 and a closed connection
        raw = await raw_exchange(proxy.port, b"NOT HTTP\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")
    finally:
        await proxy.stop()


async def test_upstream_timeout_gives_504_and_counts_an_error(backends: list[Backend]) -> None:
    proxy = await start_proxy([backends[0].member()], read_timeout_s=0.3)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(proxy.url + "/slow")
            assert r.status_code == 504 and "server s0 did not answer" in r.text
            r = await c.get(proxy.url + "/after")  # same client connection still works
            assert r.status_code == 200
        (srv,) = proxy.snapshot().servers
        assert srv.upstream_errors == 1 and srv.responses_2xx == 1 and srv.active_connections == 0
    finally:
        await proxy.stop()


async def test_a_pooled_connection_closed_by_the_server_is_retried() -> None:
    """A server that answers one request per connection and then hangs up on the next one."""
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(hits)
        hits.append(conn)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn%d" % (len(str(conn)) + 4, conn))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request on this connection: no answer
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy([Member(server_id="flaky", address=f"127.0.0.1:{port}")])
    try:
        async with httpx.AsyncClient() as c:
            texts = [(await c.get(proxy.url + "/")).text for _ in range(3)]
        assert texts == ["conn0", "conn1", "conn2"]
        (srv,) = proxy.snapshot().servers
        assert srv.responses_2xx == 3 and srv.upstream_errors == 0
    finally:
        await proxy.stop()
        server.close()
