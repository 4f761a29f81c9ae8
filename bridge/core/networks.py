"""Networks to search for Wall Connectors: parsing, limits, refusals, warnings, probe source."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOSTS: Final = 4096
# A search of more addresses than this is allowed but warned about by check-config.
LARGE_NETWORK_HOSTS: Final = 1024
DEFAULT_TIMEOUT_S: Final = 1.5
MAX_TIMEOUT_S: Final = 60.0
DEFAULT_CONCURRENCY: Final = 32
MAX_CONCURRENCY: Final = 256
MAX_PORT: Final = 65_535
_HUGE_COUNT: Final = 10**7


def host_count(network: IPNetwork) -> int:
    """How many addresses :func:`parse_network` gives for ``network``, without listing them."""
    if network.prefixlen >= network.max_prefixlen - 1:
        return network.num_addresses  # /31, /32, /127, /128: every address is a host
    if network.version == 4:  # noqa: PLR2004 - IP version
        return network.num_addresses - 2  # network and broadcast addresses
    return network.num_addresses - 1  # the Subnet-Router anycast address


def read_network(text: str) -> IPNetwork:
    """An IPv4 or IPv6 network (``192.168.1.0/24``, host bits allowed) or one address.

    Raises:
        ValueError: a one-line reason: not a network, or a multicast or unspecified one.
    """
    value = text.strip()
    if not value:
        raise ValueError("give a network such as 192.168.1.0/24, or one address")
    if "%" in value:
        raise ValueError(f"{value!r}: IPv6 zone ids (%eth0) are not supported")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 or IPv6 network (such as 192.168.1.0/24) or address"
        ) from None
    if network.is_multicast:
        raise ValueError(
            f"{network} is a multicast network; Wall Connectors have unicast addresses"
        )
    if network.is_unspecified:
        raise ValueError(f"{value!r} is the unspecified address; give a network or a host")
    return network


def _too_large(network: IPNetwork, max_hosts: int) -> str | None:
    count = host_count(network)
    if count <= max_hosts:
        return None
    shown = (
        f"about 2^{network.max_prefixlen - network.prefixlen}"
        if count >= _HUGE_COUNT
        else str(count)
    )
    return (
        f"{network} has {shown} host addresses; scan at most {max_hosts} at a time "
        "(an IPv4 /20 or IPv6 /116), or split it"
    )


def parse_network(text: str, max_hosts: int = MAX_HOSTS) -> list[IPAddress]:
    """The host addresses of an IPv4 or IPv6 network (``192.168.1.0/24``) or one address.

    Host bits are allowed (``192.168.1.7/24`` is the /24). /31, /32, /127 and /128 give all their
    addresses.

    Raises:
        ValueError: a one-line reason: not a network, a multicast or unspecified one, or more
            than ``max_hosts`` host addresses (checked before any address is listed).
    """
    network = read_network(text)
    problem = _too_large(network, max_hosts)
    if problem:
        raise ValueError(problem)
    if network.prefixlen >= network.max_prefixlen - 1:
        return list(network)
    return list(network.hosts())


def network_problem(text: str) -> str | None:
    """Why ``text`` cannot be a ``[discovery]`` network, in one line, or ``None`` if it can.

    Refused: anything :func:`parse_network` refuses, and public ranges. A range is public when
    any of its addresses is globally routable (``ipaddress``'s ``is_global``); private,
    loopback, link-local, unique-local and shared (CGNAT, 100.64.0.0/10) ranges are allowed,
    because the bridge must never knock on the doors of other people's networks.
    """
    try:
        network = read_network(text)
    except ValueError as error:
        return str(error)
    if network.is_global:
        return (
            f"{network} is a public range; search only private networks "
            "(such as 192.168.0.0/16, 10.0.0.0/8, 172.16.0.0/12 or fd00::/8)"
        )
    return _too_large(network, MAX_HOSTS)


def search_time_s(hosts: int, concurrency: int, timeout_s: float) -> float:
    """The longest one search of ``hosts`` addresses may take: every address silent."""
    # A silent probe waits out the connect timeout; an accepted but mute one, the read timeout too.
    return math.ceil(hosts / concurrency) * 2 * timeout_s


def network_warnings(
    text: str,
    *,
    concurrency: int,
    timeout_s: float,
    local_addresses: Iterable[str],
) -> list[str]:
    """What check-config says about a usable network: too large, or not local.

    ``local_addresses``: the addresses this machine would send from (found by the caller, which
    does the I/O); a network holding none of them is reached through a router, where units are
    unlikely and every probe costs a router's time.
    """
    network = read_network(text)
    warnings = []
    hosts = host_count(network)
    if hosts > LARGE_NETWORK_HOSTS:
        longest = search_time_s(hosts, concurrency, timeout_s)
        warnings.append(
            f"{network} has {hosts} addresses (more than {LARGE_NETWORK_HOSTS}): one search "
            f"may take up to {longest:.0f} s ({hosts} / {concurrency} at a time x "
            f"{timeout_s:g} s connect and {timeout_s:g} s read timeout); a smaller network "
            "finds units sooner"
        )
    if not any(_inside(address, network) for address in local_addresses):
        warnings.append(
            f"{network} is not local: no address of this machine is in it, so it is searched "
            "through a router; give the network this machine (or a connector's "
            "source_address) is on"
        )
    return warnings


def _inside(address: str, network: IPNetwork) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def probe_source(network_text: str, source_addresses: Iterable[str | None]) -> str | None:
    """The local address to probe ``network_text`` from, or ``None`` for the default route.

    The first configured connector ``source_address`` that lies inside the network (a second
    interface's own address on, say, a power-sharing leader's Wi-Fi); otherwise the system's
    routing decides.
    """
    network = read_network(network_text)
    return next(
        (address for address in source_addresses if address and _inside(address, network)),
        None,
    )


def source_for_address(
    address: str, networks: Sequence[str], source_addresses: Iterable[str | None]
) -> str | None:
    """The local address to reach ``address`` from: the one its network is probed from.

    So a unit found on a second interface's network is polled the way it was found.
    """
    network = next((text for text in networks if _inside(address, read_network(text))), None)
    return None if network is None else probe_source(network, source_addresses)


def check_options(port: int, timeout_s: float, concurrency: int) -> None:
    """Check the scan options.

    Raises:
        ValueError: a one-line reason for the first option out of range.
    """
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"--port {port} is out of range 1-{MAX_PORT}")
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise ValueError(f"--timeout must be above 0 and at most {MAX_TIMEOUT_S:g} s")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--concurrency must be within 1-{MAX_CONCURRENCY}")
