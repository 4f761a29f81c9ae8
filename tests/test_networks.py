"""The pure network checks behind [discovery] and scan: refusals, warnings, probe source."""

from __future__ import annotations

import pytest

from bridge.core.networks import (
    LARGE_NETWORK_HOSTS,
    network_problem,
    network_warnings,
    probe_source,
    search_time_s,
    source_for_address,
)


@pytest.mark.parametrize(
    "network",
    [
        "192.168.1.0/24",
        "10.1.0.0/20",
        "172.16.5.0/24",
        "127.0.0.0/29",
        "169.254.10.0/24",
        "100.64.0.0/22",  # shared address space (CGNAT): not public
        "fd00::/120",
        "192.168.1.50",
    ],
)
def test_private_loopback_link_local_and_shared_ranges_are_usable(network: str) -> None:
    assert network_problem(network) is None


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        ("8.8.8.0/24", "public range"),
        ("172.32.0.0/24", "public range"),  # just past 172.16.0.0/12
        ("10.0.0.0/7", "public range"),  # reaches into 11.0.0.0/8
        ("2001:4860::/120", "public range"),
        ("1.2.3.4", "public range"),
        ("192.168.0.0/16", "65534 host addresses"),
        ("fd00::/64", "about 2^64 host addresses"),
        ("", "give a network"),
        ("192.168.1.0/24/2", "not an IPv4 or IPv6 network"),
        ("fe80::/120%eth0", "zone ids"),
        ("0.0.0.0", "unspecified"),
    ],
)
def test_refused_networks_give_one_line_reasons(network: str, reason: str) -> None:
    problem = network_problem(network)
    assert problem is not None
    assert reason in problem
    assert "\n" not in problem


def test_search_time_is_rounds_times_both_timeouts() -> None:
    """4094 addresses 32 at a time are 128 rounds of at most 2 x 1.5 s."""
    assert search_time_s(4094, 32, 1.5) == 128 * 3.0
    assert search_time_s(6, 32, 1.5) == 3.0


def test_a_large_network_is_warned_about_with_the_time_one_search_may_take() -> None:
    (warning,) = network_warnings(
        "10.99.0.0/20", concurrency=64, timeout_s=1.0, local_addresses=["10.99.3.4"]
    )
    assert "4094 addresses" in warning
    assert f"more than {LARGE_NETWORK_HOSTS}" in warning
    assert "128 s" in warning  # ceil(4094 / 64) = 64 rounds x 2 x 1 s


def test_a_network_of_1024_hosts_is_not_large() -> None:
    """A /22 has 1022 hosts: no warning."""
    assert (
        network_warnings(
            "192.168.0.0/22", concurrency=32, timeout_s=1.5, local_addresses=["192.168.1.2"]
        )
        == []
    )


def test_a_network_without_an_address_of_this_machine_is_not_local() -> None:
    (warning,) = network_warnings(
        "192.168.77.0/24",
        concurrency=32,
        timeout_s=1.5,
        local_addresses=["192.168.1.2", "not an address"],
    )
    assert "not local" in warning


def test_probe_source_is_the_source_address_inside_the_network() -> None:
    """A second interface's address probes its own network; others use the default route."""
    sources = [None, "192.168.1.2", "192.168.92.50"]
    assert probe_source("192.168.92.0/24", sources) == "192.168.92.50"
    assert probe_source("192.168.1.0/24", sources) == "192.168.1.2"
    assert probe_source("10.0.0.0/24", sources) is None
    assert probe_source("10.0.0.0/24", []) is None


def test_an_address_is_reached_from_where_its_network_is_probed() -> None:
    networks = ["192.168.1.0/24", "192.168.90.0/24"]
    sources = [None, "192.168.90.5"]
    assert source_for_address("192.168.90.17", networks, sources) == "192.168.90.5"
    assert source_for_address("192.168.1.17", networks, sources) is None
    assert source_for_address("10.0.0.1", networks, sources) is None
    assert source_for_address("not an address", networks, sources) is None
