"""The client's address: the TCP peer, or behind trusted reverse proxies the hop they vouch for.

Each proxy appends the address it got the request from to X-Forwarded-For, so the list is read
from the right: hops that are trusted proxies are skipped and the first one that is not is the
client. Whatever is left of it was written by the client itself and proves nothing.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: bare, `v4:port`, `[v6]` or `[v6]:port`; None if it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's spelling of an IPv4 peer
    return address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    # `in` does not compare versions itself: an IPv4 address could "match" an IPv6 network.
    return any(address.version == net.version and address in net for net in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted_proxies: tuple[str, ...]) -> str:
    """The client's IP address for rate limits and device records."""
    if not peer:
        return "unknown"
    if not trusted_proxies:
        return peer
    networks = _networks(trusted_proxies)
    current = parse_address(peer)
    if current is None or not _trusted(current, networks):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            break  # garbage: keep the nearest proxy's address rather than the client's text
        current = address
        if not _trusted(address, networks):
            break
    return str(current)
