"""Run one built-in balancer: `python -m poolctl.balancer --listen 127.0.0.1:8080 --admin 127.0.0.1:9080 --token T`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from poolctl.domain.balancer_spec import ALGORITHMS
from poolctl.domain.balancing import Member


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _member(text: str) -> Member:
    """id=host:port[@weight]"""
    sid, sep, rest = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not id=host:port[@weight]")
    address, _, weight = rest.partition("@")
    try:
        return Member(server_id=sid, address=address, weight=int(weight or 1))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m poolctl.balancer", description="poolctl's built-in load balancer"
    )
    p.add_argument("--name", default="builtin")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8080), help="host:port for traffic")
    p.add_argument(
        "--admin", type=_hostport, default=("127.0.0.1", 9080), help="host:port of the admin endpoint"
    )
    p.add_argument("--token", default=os.environ.get("POOLCTL_BALANCER_TOKEN", ""), help="admin bearer token")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="round_robin")
    p.add_argument("--sticky", action="store_true", help="sticky sessions by cookie")
    p.add_argument("--sticky-cookie", default="POOLCTL_SRV")
    p.add_argument(
        "--drain-sticky", choices=("keep", "move"), default="keep", help="sticky clients of a draining member"
    )
    p.add_argument(
        "--slow-start-s", type=float, default=0.0, help="ramp a member entering rotation up over this time"
    )
    p.add_argument("--cert", help="PEM certificate: terminate TLS")
    p.add_argument("--key", help="PEM private key")
    p.add_argument(
        "--member", type=_member, action="append", default=[], help="initial member id=host:port[@weight]"
    )
    p.add_argument("--allow-remote-admin", action="store_true", help="allow a non-loopback admin address")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--log-level", default="INFO")
    return p


async def _main(args: argparse.Namespace) -> None:
    from poolctl.balancer.proxy import ProxyConfig, serve_until_signalled

    config = ProxyConfig(
        name=args.name,
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        admin_host=args.admin[0],
        admin_port=args.admin[1],
        token=args.token,
        algorithm=args.algorithm,
        sticky=args.sticky,
        sticky_cookie=args.sticky_cookie,
        drain_sticky=args.drain_sticky,
        slow_start_s=args.slow_start_s,
        certfile=args.cert,
        keyfile=args.key,
        members=args.member,
        allow_remote_admin=args.allow_remote_admin,
    )
    await serve_until_signalled(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.token:
        print("error: --token (or POOLCTL_BALANCER_TOKEN) is required", file=sys.stderr)
        return 2
    if bool(args.cert) != bool(args.key):
        print("error: --cert and --key go together", file=sys.stderr)
        return 2
    run: Any = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    try:
        run(_main(args))
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
