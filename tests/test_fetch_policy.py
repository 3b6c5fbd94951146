"""The SSRF guard's address and URL policy: pure, fast, the whole matrix of the issue."""

from __future__ import annotations

import ipaddress

import pytest

from thumbnailer.fetch import (
    Policy,
    UrlNotAllowed,
    check_url,
    embedded_ipv4,
    forbidden_reason,
    parse_address,
    parse_target,
    resolve,
    vet,
)

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::7f00:1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001::1",  # Teredo
    "2001:db8::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "100::1",
]

ALLOWED = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "100.128.0.1",  # just past CGNAT
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("text", FORBIDDEN)
def test_forbidden_addresses_are_refused(text: str) -> None:
    assert forbidden_reason(parse_address(text)) is not None


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses_are_allowed(text: str) -> None:
    assert forbidden_reason(parse_address(text)) is None


def test_reason_names_the_kind_of_address() -> None:
    assert forbidden_reason(parse_address("127.0.0.1")) == "a loopback address"
    assert forbidden_reason(parse_address("169.254.169.254")) == "a link-local address"
    assert forbidden_reason(parse_address("::ffff:10.0.0.1")) == "a private address"


def test_embedded_ipv4_unwraps_every_spelling() -> None:
    loopback = ipaddress.IPv4Address("127.0.0.1")
    for text in ("::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"):
        address = ipaddress.IPv6Address(text)
        assert embedded_ipv4(address) == loopback, text
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "//example.com/a.jpg",
        "example.com/a.jpg",
        "http://",
        "http://user:pw@example.com/a.jpg",
        "http://[::1/",
    ],
)
def test_urls_of_other_kinds_are_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        parse_target(url)


def test_target_has_lower_case_host_and_default_port() -> None:
    assert parse_target("HTTPS://Example.COM./a.jpg") == parse_target("https://example.com:443/x")
    assert parse_target("http://[::1]:8080/").netloc == "[::1]:8080"


def test_allowed_hosts_match_host_or_host_and_port() -> None:
    policy = Policy.of(["images.internal", "127.0.0.1:8080", "[::1]:9000", " Cdn.Local. "])
    assert policy.exempt("images.internal", 443)
    assert policy.exempt("IMAGES.internal.", 80)
    assert policy.exempt("cdn.local", 1234)
    assert policy.exempt("127.0.0.1", 8080)
    assert not policy.exempt("127.0.0.1", 8081)
    assert policy.exempt("::1", 9000)
    assert not policy.exempt("::1", 9001)
    assert not policy.exempt("other.internal", 443)


def test_vet_keeps_only_allowed_addresses() -> None:
    mixed = [parse_address("10.0.0.1"), parse_address("8.8.8.8")]
    assert vet("mixed.example", mixed) == [parse_address("8.8.8.8")]
    with pytest.raises(UrlNotAllowed, match="loopback"):
        vet("localhost", [parse_address("127.0.0.1"), parse_address("::1")])


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001"])
async def test_numeric_ipv4_forms_resolve_to_what_they_mean(host: str) -> None:
    assert await resolve(host, 80) == [parse_address("127.0.0.1")]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.jpg",
        "http://localhost/a.jpg",
        "http://localhost./a.jpg",
        "http://10.0.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://[::ffff:7f00:1]/a.jpg",
        "http://2130706433/a.jpg",
        "http://0x7f.1/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://[fe80::1]/a.jpg",
    ],
)
async def test_check_url_refuses_forbidden_targets_at_once(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        await check_url(url, Policy())


async def test_check_url_lets_allowed_hosts_and_unresolvable_names_through() -> None:
    await check_url("http://127.0.0.1:8080/a.jpg", Policy.of(["127.0.0.1:8080"]))
    await check_url("http://localhost/a.jpg", Policy.of(["localhost"]))
    # Not resolvable now (DNS may be down): the fetch checks again when it connects.
    await check_url("http://no-such-host.invalid/a.jpg", Policy())
