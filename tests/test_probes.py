"""Probes against real servers this test starts: HTTP(S) status/body matching, TCP, ICMP."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import icmplib
import pytest
import pytest_asyncio
from aiohttp import web

from poolctl.activities import probes
from poolctl.activities.probes import Prober, ProbeResult
from poolctl.domain.health_spec import HealthCheckSpec

BIG = 200_000


def make_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text='{"status": "ok", "version": 3}')

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"x" * BIG + b"MARKER")
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def echo_method(request: web.Request) -> web.Response:
        return web.Response(text=f"method={request.method}")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_route("*", "/method", echo_method)
    return app


async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest_asyncio.fixture
async def http_port() -> AsyncIterator[int]:
    runner, port = await start(make_app())
    yield port
    await runner.cleanup()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest_asyncio.fixture
async def https_port(cert: tuple[Path, Path]) -> AsyncIterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    runner, port = await start(make_app(), ctx)
    yield port
    await runner.cleanup()


@pytest_asyncio.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober(max_connections=50)
    yield p
    await p.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(**kw: object) -> HealthCheckSpec:
    kw.setdefault("interval", 5)
    kw.setdefault("timeout", 1)
    return HealthCheckSpec(**kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- HTTP


async def test_http_ok(prober: Prober, http_port: int) -> None:
    r = await prober.probe(http(path="/ok"), "127.0.0.1", http_port)
    assert r.ok and r.status_code == 200 and r.latency_ms is not None and not r.config_error


@pytest.mark.parametrize(
    ("code", "expected", "ok"),
    [
        (200, None, True),
        (204, None, True),
        (399, None, True),
        (404, None, False),
        (500, None, False),
        (503, ["200-299", "503"], True),
        (302, [200], False),
        (418, [200, "400-499"], True),
        (201, [200], False),
    ],
)
async def test_http_status_matching(
    prober: Prober, http_port: int, code: int, expected: list | None, ok: bool
) -> None:
    kw: dict = {"path": f"/status/{code}"}
    if expected is not None:
        kw["expected_status"] = expected
    r = await prober.probe(http(**kw), "127.0.0.1", http_port)
    assert r.ok is ok and r.status_code == code and not r.config_error
    if not ok:
        assert r.error == f"unexpected status {code}"


async def test_redirect_is_not_followed(prober: Prober, http_port: int) -> None:
    r = await prober.probe(http(path="/redirect"), "127.0.0.1", http_port)
    assert r.ok and r.status_code == 302
    r = await prober.probe(http(path="/redirect", expected_status=["200-299"]), "127.0.0.1", http_port)
    assert not r.ok and r.status_code == 302


async def test_http_body_match(prober: Prober, http_port: int) -> None:
    assert (await prober.probe(http(path="/ok", body_match='"ok"'), "127.0.0.1", http_port)).ok
    r = await prober.probe(http(path="/ok", body_match="degraded"), "127.0.0.1", http_port)
    assert not r.ok and r.status_code == 200 and "body_match" in (r.error or "")
    assert (await prober.probe(http(path="/ok", body_regex=r'"version":\s*\d+'), "127.0.0.1", http_port)).ok
    assert not (await prober.probe(http(path="/ok", body_regex=r"^version"), "127.0.0.1", http_port)).ok


async def test_http_body_read_is_bounded(prober: Prober, http_port: int) -> None:
    # the marker sits after BIG bytes: with the default bound (64 KiB) it is never read
    r = await prober.probe(http(path="/big", body_match="MARKER"), "127.0.0.1", http_port)
    assert not r.ok and "first 65536 bytes" in (r.error or "")
    r = await prober.probe(
        http(path="/big", body_match="MARKER", max_body_bytes=BIG + 100), "127.0.0.1", http_port
    )
    assert r.ok


async def test_http_method(prober: Prober, http_port: int) -> None:
    r = await prober.probe(
        http(path="/method", method="POST", body_match="method=POST"), "127.0.0.1", http_port
    )
    assert r.ok
    assert (await prober.probe(http(path="/method", method="HEAD"), "127.0.0.1", http_port)).ok


async def test_slow_server_times_out(prober: Prober, http_port: int) -> None:
    r = await prober.probe(http(path="/slow", timeout=0.3, interval=1), "127.0.0.1", http_port)
    assert not r.ok and not r.config_error
    assert r.error == "timeout after 0.3s"


async def test_http_connection_refused(prober: Prober) -> None:
    r = await prober.probe(http(path="/ok"), "127.0.0.1", closed_port())
    assert not r.ok and not r.config_error and "connect failed" in (r.error or "")


async def test_status_only_probe_sends_one_request_head_and_closes() -> None:
    """The status-only path (http, no body check): a well-formed HTTP/1.1 request (Host with the port, the
    method, the path and query as given, Connection: close), the code from the status line."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = Prober()
    try:
        r = await p.probe(http(path="/h?x=1", method="HEAD"), "127.0.0.1", port)
    finally:
        await p.close()
        server.close()
        await server.wait_closed()
    assert not r.ok and r.status_code == 503 and r.error == "unexpected status 503"
    [head] = heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "HEAD /h?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines and "Connection: close" in lines


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "bad response: status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "bad response: connection closed before"),
        (b"", "bad response: connection closed before"),
    ],
)
async def test_status_only_probe_fails_on_what_is_not_an_http_response(reply: bytes, error: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    p = Prober()
    try:
        r = await p.probe(http(path="/"), "127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        await p.close()
        server.close()
        await server.wait_closed()
    assert not r.ok and not r.config_error and (r.error or "").startswith(error), r.error


async def test_status_only_probe_timed_out_while_connecting_leaves_no_unretrieved_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timeout that hits while create_connection is finishing (it then closes the new transport, whose
    connection_lost fails the reply) is a timeout result, not also an asyncio 'Future exception was never
    retrieved' error log (1,956 of them in a 5,000-target run)."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def connect_then_stall(factory, host, port):  # type: ignore[no-untyped-def]
        protocol = factory()
        try:
            await asyncio.sleep(10)  # waiting for connection_made
        except asyncio.CancelledError:
            loop.call_soon(protocol.connection_lost, None)  # create_connection closes the transport
            raise

    monkeypatch.setattr(loop, "create_connection", connect_then_stall)
    p = Prober()
    r = await p.probe(http(path="/", timeout=0.05, interval=1), "127.0.0.1", 9)
    await asyncio.sleep(0.01)  # connection_lost runs
    gc.collect()  # an unretrieved failed future reports itself when it is collected
    await asyncio.sleep(0)
    assert r.error == "timeout after 0.05s"
    assert errors == []


async def test_port_override(prober: Prober, http_port: int) -> None:
    r = await prober.probe(http(path="/ok", port=http_port), "127.0.0.1", closed_port())
    assert r.ok


async def test_no_port_is_a_config_error(prober: Prober) -> None:
    r = await prober.probe(http(path="/ok"), "127.0.0.1", None)
    assert not r.ok and r.config_error


async def test_keepalive_prober(http_port: int) -> None:
    p = Prober(keepalive=True)
    try:
        for _ in range(3):
            assert (await p.probe(http(path="/ok"), "127.0.0.1", http_port)).ok
    finally:
        await p.close()


# ---------------------------------------------------------------------------- HTTPS


async def test_https_without_verification(prober: Prober, https_port: int) -> None:
    r = await prober.probe(http(type="https", path="/ok", tls_verify=False), "127.0.0.1", https_port)
    assert r.ok, r.error


async def test_https_untrusted_certificate_is_a_target_failure(prober: Prober, https_port: int) -> None:
    r = await prober.probe(http(type="https", path="/ok"), "127.0.0.1", https_port)
    assert not r.ok and not r.config_error
    assert "certificate" in (r.error or "").lower() or "TLS" in (r.error or "")


async def test_https_with_ca_file(prober: Prober, https_port: int, cert: tuple[Path, Path]) -> None:
    r = await prober.probe(http(type="https", path="/ok", ca_file=str(cert[0])), "127.0.0.1", https_port)
    assert r.ok, r.error


async def test_bad_ca_file_is_a_config_error(prober: Prober, https_port: int, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    r = await prober.probe(http(type="https", path="/ok", ca_file=str(missing)), "127.0.0.1", https_port)
    assert not r.ok and r.config_error and "ProbeConfigError" in (r.error or "")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    r = await prober.probe(http(type="https", path="/ok", ca_file=str(garbage)), "127.0.0.1", https_port)
    assert not r.ok and r.config_error


# ---------------------------------------------------------------------------- TCP


async def test_tcp_open_port(prober: Prober, http_port: int) -> None:
    r = await prober.probe(HealthCheckSpec(type="tcp", interval=5, timeout=1), "127.0.0.1", http_port)
    assert r.ok and r.latency_ms is not None


async def test_tcp_closed_port(prober: Prober) -> None:
    r = await prober.probe(HealthCheckSpec(type="tcp", interval=5, timeout=1), "127.0.0.1", closed_port())
    assert not r.ok and not r.config_error and r.error == "connection refused"


async def test_tcp_timeout(prober: Prober) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is never routed: the connect hangs or fails, never succeeds
    r = await prober.probe(HealthCheckSpec(type="tcp", interval=1, timeout=0.2), "192.0.2.1", 80)
    assert not r.ok and not r.config_error


# ---------------------------------------------------------------------------- ICMP


ICMP = HealthCheckSpec(type="icmp", interval=5, timeout=1)


def _mode_works(privileged: bool) -> bool:
    try:
        s = socket.socket(
            socket.AF_INET, socket.SOCK_RAW if privileged else socket.SOCK_DGRAM, socket.IPPROTO_ICMP
        )
    except OSError:
        return False
    s.close()
    return True


@pytest.mark.parametrize("privileged", [None, True, False])
async def test_icmp_localhost(privileged: bool | None) -> None:
    """Ping 127.0.0.1 in each mode: it answers when the mode is allowed on this box, otherwise the
    result is a configuration error (never a failure of the target)."""
    p = Prober(icmp_privileged=privileged)
    mode = probes.raw_icmp_allowed() if privileged is None else privileged
    r = await p.probe(ICMP, "127.0.0.1")
    if _mode_works(mode):
        assert r.ok, r.error
        assert r.latency_ms is not None
    else:
        assert r.config_error and not r.ok
        assert "ProbeConfigError" in (r.error or "") and "permission" in (r.error or "")


@pytest.mark.parametrize("privileged", [True, False])
async def test_icmp_permission_problem_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, privileged: bool
) -> None:
    async def no_permission(*args: object, **kwargs: object) -> None:
        assert kwargs["privileged"] is privileged
        raise icmplib.SocketPermissionError(privileged)

    monkeypatch.setattr(icmplib, "async_ping", no_permission)
    r = await Prober(icmp_privileged=privileged).probe(ICMP, "127.0.0.1")
    assert r == ProbeResult(ok=False, config_error=True, error=r.error)
    assert "ProbeConfigError" in (r.error or "")
    assert ("CAP_NET_RAW" in (r.error or "")) and (privileged or "ping_group_range" in (r.error or ""))


async def test_icmp_auto_mode_follows_raw_socket_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    async def fake_ping(*args: object, **kwargs: object) -> object:
        seen.append(bool(kwargs["privileged"]))
        return icmplib.Host("127.0.0.1", 1, [0.1])

    monkeypatch.setattr(icmplib, "async_ping", fake_ping)
    monkeypatch.setattr(probes, "_raw_icmp", False)
    assert (await Prober().probe(ICMP, "127.0.0.1")).ok
    monkeypatch.setattr(probes, "_raw_icmp", True)
    assert (await Prober().probe(ICMP, "127.0.0.1")).ok
    assert seen == [False, True]


async def test_icmp_unreachable_host_is_a_target_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(*args: object, **kwargs: object) -> object:
        return icmplib.Host("192.0.2.1", 1, [])

    monkeypatch.setattr(icmplib, "async_ping", silent)
    r = await Prober(icmp_privileged=True).probe(ICMP, "192.0.2.1")
    assert not r.ok and not r.config_error and "no echo reply" in (r.error or "")


async def test_shared_prober_is_one_per_loop() -> None:
    a = probes.get_prober()
    assert probes.get_prober() is a
    await probes.close_shared_prober()
