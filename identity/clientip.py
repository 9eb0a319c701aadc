"""Which address a request comes from. Pure.

``X-Forwarded-For`` is believed only when the socket peer is a configured trusted proxy, and then only up to the
rightmost address that is not itself a trusted proxy: every proxy appends the address it received from, so
entries left of the first untrusted one may have been written by the client (RFC 7239 section 8.3, and the
"rightmost untrusted" rule of MDN's X-Forwarded-For page). Without trusted proxies the peer is the client, so a
client cannot pick a fresh rate-limit bucket by sending its own header (reference 2.10 shows Better Auth can).
"""

from __future__ import annotations

import ipaddress

from identity.config import IPNetwork


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[IPNetwork, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def client_address(peer: str | None, forwarded_for: list[str], proxies: tuple[IPNetwork, ...]) -> str:
    if not peer:
        return ""
    peer_ip = _parse(peer)
    if peer_ip is None or not proxies or not forwarded_for or not _trusted(peer_ip, proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    last_trusted = str(peer_ip)
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            # A trusted proxy would have appended a real address: the chain is broken here.
            return last_trusted
        if not _trusted(address, proxies):
            return str(address)
        last_trusted = str(address)
    return last_trusted
