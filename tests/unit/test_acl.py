"""Source ACLs: CIDR parsing and its error messages, membership (IPv4-mapped IPv6 included), allow/deny."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epollmux.acl import Access, CIDRList, source_ip


def test_entries_networks_and_hosts():
    cl = CIDRList.parse(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", " 172.16.0.0/12 "])
    for ip in ("10.0.0.0", "10.255.255.255", "192.168.1.7", "2001:db8:ffff::1", "::1", "172.31.0.1"):
        assert cl.contains(ip), ip
        assert ip in cl
    for ip in ("11.0.0.0", "9.255.255.255", "192.168.1.6", "192.168.1.8", "2001:db9::", "::2", "172.32.0.0"):
        assert not cl.contains(ip), ip
    assert len(cl) == 5 and cl


def test_comma_separated_string_and_empty_list():
    assert CIDRList.parse("10.0.0.0/8, ::1") == CIDRList.parse(["::1", "10.0.0.0/8"])
    empty = CIDRList.parse([])
    assert not empty and not empty.contains("10.0.0.1") and not empty.contains("::1")


def test_zero_prefixes_cover_their_own_family_only():
    assert CIDRList.parse(["0.0.0.0/0"]).contains("203.0.113.9")
    assert not CIDRList.parse(["0.0.0.0/0"]).contains("2001:db8::1")
    assert CIDRList.parse(["::/0"]).contains("2001:db8::1")
    assert not CIDRList.parse(["::/0"]).contains("203.0.113.9")
    assert not CIDRList.parse(["::/0"]).contains("::ffff:203.0.113.9")   # that is an IPv4 client


def test_mapped_addresses_match_ipv4_entries():
    cl = CIDRList.parse(["10.0.0.0/8"])
    assert cl.contains("::ffff:10.1.2.3")
    assert cl.contains(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not cl.contains("::ffff:11.1.2.3")
    mapped_entry = CIDRList.parse(["::ffff:10.0.0.0/104", "::ffff:192.0.2.1"])
    assert mapped_entry == CIDRList.parse(["10.0.0.0/8", "192.0.2.1/32"])
    assert mapped_entry.contains("10.9.9.9") and mapped_entry.contains("::ffff:192.0.2.1")


def test_scoped_addresses():
    assert CIDRList.parse(["fe80::/10"]).contains("fe80::1%eth0")
    assert source_ip("fe80::1%2") == ipaddress.ip_address("fe80::1")


@pytest.mark.parametrize("entry,message", [
    ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
    ("10.0.0.0/33", "not an address"),
    ("10.0.0.256", "not an address"),
    ("example.org", "not an address"),
    ("2001:db8::/129", "not an address"),
    ("fe80::1%eth0", "scoped"),
    ("", "empty entry"),
    ("10.0.0.0/8/8", "not an address"),
])
def test_bad_entries_are_named(entry, message):
    with pytest.raises(ValueError) as exc:
        CIDRList.parse(["192.0.2.0/24", entry])
    assert message in str(exc.value)
    if entry:
        assert f"'{entry}'" in str(exc.value)


def test_bad_address_to_contains_raises():
    with pytest.raises(ValueError):
        CIDRList.parse(["10.0.0.0/8"]).contains("not-an-ip")


def test_access_rules():
    allow = CIDRList.parse(["10.0.0.0/8"])
    deny = CIDRList.parse(["10.6.6.0/24"])
    both = Access(allow, deny)
    assert both.permits("10.1.1.1") and not both.permits("10.6.6.6") and not both.permits("192.0.2.1")
    assert both.permits("::ffff:10.1.1.1") and not both.permits("::ffff:10.6.6.6")
    only_deny = Access(deny=deny)
    assert only_deny.permits("192.0.2.1") and not only_deny.permits("10.6.6.1")
    only_allow = Access(allow=allow)
    assert only_allow.permits("10.0.0.1") and not only_allow.permits("::1")
    assert Access().permits("192.0.2.1") and Access().open and not both.open
    assert not Access(allow=CIDRList.parse([])).permits("10.0.0.1")    # an explicit empty allow list: nobody
    deny_wins = Access(allow=CIDRList.parse(["0.0.0.0/0"]), deny=CIDRList.parse(["192.0.2.1"]))
    assert not deny_wins.permits("192.0.2.1") and deny_wins.permits("192.0.2.2")


def test_access_parse_treats_empty_as_not_configured():
    assert Access.parse(None, None).open
    assert Access.parse([], "").open
    assert Access.parse(["", " "], None).open
    a = Access.parse("10.0.0.0/8", ["10.6.6.0/24"])
    assert a.permits("10.0.0.1") and not a.permits("10.6.6.1") and not a.permits("192.0.2.1")
    with pytest.raises(ValueError, match="'10.0.0.1/8'"):
        Access.parse(["10.0.0.1/8"])


MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
networks = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network(t, strict=False)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network(t, strict=False)),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(96, 128)).map(      # IPv4-mapped entries
        lambda t: ipaddress.IPv6Network((int(MAPPED.network_address) | t[0], t[1]), strict=False)),
)
ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
addresses = st.one_of(ipv4, st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
                      ipv4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")))


def effective(net):
    """The documented meaning of an entry: a mapped-IPv6 entry of /96 or longer is an IPv4 entry."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


@settings(max_examples=300, deadline=None)
@given(nets=st.lists(networks, max_size=8), ips=st.lists(addresses, min_size=1, max_size=8))
def test_contains_agrees_with_ipaddress(nets, ips):
    cl = CIDRList.parse([str(n) for n in nets])
    for ip in ips:
        norm = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
        expected = any(e.version == norm.version and norm in e for e in map(effective, nets))
        assert cl.contains(str(ip)) == expected, (nets, ip)
        assert Access(allow=cl).permits(ip) == expected
        assert Access(deny=cl).permits(ip) != expected
