"""Network address helpers shared by the balancer, the Temporal client set-up and static pools (server
addresses in `host:port` form). Pure: no I/O."""

from __future__ import annotations

import ipaddress
import re


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IPs (127.0.0.0/8, ::1); False for names and other addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def parse_server_address(text: str) -> tuple[str, int]:
    """`host:port` -> (host, port), strictly: host is an IPv4 address (dotted quad), an IPv6 address in
    brackets (`[::1]:8001`, returned without them, in its compressed form) or a DNS name (RFC 1123 labels,
    lower-cased); port is 1-65535, digits only, no leading zero. Raises ValueError saying what is wrong."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise ValueError(f"{text!r} is not a host:port address (no spaces around it)")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r}: an IPv6 address is written [address]:port, e.g. [::1]:8001")
        raw_host, port_text = text[1:close], text[close + 2 :]
        if "%" in raw_host:
            raise ValueError(f"{text!r}: IPv6 zone ids (%...) are not supported")
        try:
            v6 = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise ValueError(f"{text!r}: {raw_host!r} is not an IPv6 address") from None
        if v6.is_unspecified or v6.is_multicast:
            raise ValueError(f"{text!r}: {raw_host} is not the address of one server")
        host = v6.compressed
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: an IPv6 address needs brackets, e.g. [::1]:8001")
        raw_host, sep, port_text = text.rpartition(":")
        if not sep or not raw_host:
            raise ValueError(f"{text!r} is not a host:port address (e.g. 10.0.0.5:8080)")
        host = _ipv4_or_name(text, raw_host)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    if len(port_text) > 1 and port_text.startswith("0"):
        raise ValueError(f"{text!r}: port {port_text!r} has a leading zero")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 1-65535")
    return host, port


def _ipv4_or_name(text: str, host: str) -> str:
    if all(part.isascii() and part.isdigit() for part in host.split(".")):
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
        if v4.is_unspecified or v4.is_multicast or v4 == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"{text!r}: {host} is not the address of one server")
        return str(v4)
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ValueError(
            f"{text!r}: {host!r} is not a host name (letters, digits and '-' in dot-separated labels)"
        )
    return name


def format_server_address(host: str, port: int) -> str:
    """(host, port) -> `host:port`, IPv6 hosts in brackets: the canonical form of a server address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_server_address(text: str) -> str:
    """The canonical spelling of `text` (`[0:0::1]:08` is refused; `[0::1]:80` -> `[::1]:80`).
    Raises ValueError like `parse_server_address`."""
    return format_server_address(*parse_server_address(text))
