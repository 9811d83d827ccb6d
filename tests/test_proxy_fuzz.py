"""Parser fuzz test of the built-in balancer: hostile request bytes in, only strict HTTP/1.1 out.

Hypothesis builds pipelines of requests from valid and hostile parts (CR, LF and NUL in every field, bare LF
line ends, odd versions, Content-Length and Transfer-Encoding values, chunk sizes, bodies), splits them into
random fragments and sends them through a real proxy to a member that parses what it receives with llhttp in
strict mode. Whatever the client sends: every byte that reaches the member parses strictly, no request field
carries CR, LF or NUL, the client receives well-formed responses and exactly one per request the member served
(nothing smuggled, nothing lost), and the proxy ends with no exchange in flight.
"""

from __future__ import annotations

import asyncio

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancing import Member

BAD = [b"\r", b"\n", b"\x00", b"\r\n", b" ", b"\t", b":", b"\xff"]


class StrictMember:
    """A member that parses with llhttp (strict) and answers each request with its target."""

    def __init__(self) -> None:
        self.served: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = []
        self.violations: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        member = self

        class Proto:
            def __init__(self) -> None:
                self.url = b""
                self.headers: list[tuple[bytes, bytes]] = []

            def on_message_begin(self) -> None:
                self.url = b""
                self.headers = []

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers.append((name, value))

            def on_message_complete(self) -> None:
                member.served.append((parser.get_method(), self.url, self.headers))
                body = b"served " + self.url
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        parser = httptools.HttpRequestParser(Proto())
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                await writer.drain()
        except httptools.HttpParserError as e:
            self.violations.append(f"the member could not parse what the proxy sent: {e}")
        except ConnectionError:
            pass
        finally:
            writer.close()


def field(alphabet: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from([bytes([c]) for c in alphabet] + BAD), max_size=12).map(b"".join)


TOKEN = b"abcXYZ-09"
methods = st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"G\x00ET", b"GE T", b"get", b"CONNECT"]
)
versions = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/1.1\x00"]
)
framing = st.sampled_from(
    [
        [],
        [(b"Content-Length", b"5")],
        [(b"Content-Length", b"0")],
        [(b"Content-Length", b"-1")],
        [(b"Content-Length", b"0x5")],
        [(b"Content-Length", b"99999999999999999999")],
        [(b"Content-Length", b"5"), (b"Content-Length", b"5")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"gzip")],
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
    ]
)
chunk_sizes = st.sampled_from([b"5", b"0x5", b" 5", b"5 ", b"10000000000000000005", b"-5", b"5;x=y", b"05"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    lines = [draw(methods) + b" /" + draw(field(b"az/.%?=")) + b" " + draw(versions)]
    if draw(st.booleans()):
        lines.append(b"Host: " + draw(field(TOKEN)))
    for _ in range(draw(st.integers(0, 3))):
        lines.append(draw(field(TOKEN)) + b": " + draw(field(TOKEN + b" ;=")))
    frame = draw(framing)
    lines += [name + b": " + value for name, value in frame]
    body = b""
    if (b"Transfer-Encoding", b"chunked") in frame:
        body = (
            draw(chunk_sizes)
            + b"\r\nhello"
            + draw(st.sampled_from([b"\r\n", b"", b"XX", b"\n"]))
            + b"0\r\n\r\n"
        )
    elif frame:
        body = b"hello"
    return eol.join(lines) + eol + eol + body


END = b"GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def one_exchange(pipeline: list[bytes], cuts: list[int]) -> None:
    member = StrictMember()
    server = await asyncio.start_server(member.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = BalancerProxy(
        ProxyConfig(
            name="fuzz",
            listen_port=0,
            admin_port=None,
            members=[Member(server_id="m", address=f"127.0.0.1:{port}")],
            request_head_timeout_s=5.0,
        )
    )
    await proxy.start()
    try:
        data = b"".join(pipeline) + END
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        start = 0
        for cut in sorted({c % len(data) for c in cuts}) + [len(data)]:
            writer.write(data[start:cut])
            start = cut
            await asyncio.sleep(0)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        try:
            received = await asyncio.wait_for(reader.read(), 15)
        except ConnectionError:
            received = b""  # (a reset may only follow a complete answer: checked below by the counts)
        writer.close()

        statuses: list[int] = []

        class Responses:
            def on_headers_complete(self) -> None:
                statuses.append(parser.get_status_code())

        parser = httptools.HttpResponseParser(Responses())
        parser.feed_data(received)  # raises on anything malformed
        assert not member.violations, member.violations
        for method, url, headers in member.served:
            for part in [method, url, *(b for h in headers for b in h)]:
                assert b"\r" not in part and b"\n" not in part and b"\0" not in part, (method, url, headers)
        assert statuses.count(200) == len(member.served), (statuses, member.served)
        assert all(s.active_connections == 0 for s in proxy.snapshot().servers)
    finally:
        await proxy.stop()
        server.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pipeline=st.lists(requests(), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
)
def test_whatever_a_client_sends_only_strict_http_reaches_the_member(
    pipeline: list[bytes], cuts: list[int]
) -> None:
    asyncio.run(one_exchange(pipeline, cuts))
