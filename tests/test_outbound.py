"""The address rules of every outbound request: which addresses count as public."""

from __future__ import annotations

import pytest

from omniflash.outbound import is_public_address


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "127.0.0.1",
        "127.255.0.9",
        "169.254.169.254",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "192.0.2.10",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "ff0e::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0:10.0.0.1",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "2002:c0a8:101::1",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:0:a00:1::",
        "::127.0.0.1",
        "::10.0.0.1",
        "2001:db8::1",
        "not an address",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert is_public_address(address) is False


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::1111", "2a00:1450:4001::200e"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(address) is True


def test_ipv6_forms_of_public_ipv4_are_judged_by_that_address() -> None:
    assert is_public_address("64:ff9b::808:808") is True
    assert is_public_address("2002:808:808::1") is True
    assert is_public_address("::ffff:8.8.8.8") is True
