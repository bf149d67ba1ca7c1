"""PROXY protocol v1/v2 parser and builder: spec vectors, edge cases, fuzzing, and a recorded HAProxy header.

The byte vectors are written out by hand from the spec text; live HAProxy bytes: e2e/test_proxyproto_haproxy.py.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from epollmux.wire import proxyproto as pp
from epollmux.wire.proxyproto import Endpoint, Status

SIG = bytes.fromhex("0D0A0D0A000D0A515549540A")
V1_EXAMPLE = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V2_TCP4 = SIG + bytes.fromhex("21 11 000C C0A80001 C0A8000B DC04 01BB")
ALPN_H2 = bytes.fromhex("01 0002 6832")
AUTHORITY_EXAMPLE = bytes.fromhex("02 000B") + b"example.com"
V2_TCP4_TLVS = SIG + bytes.fromhex("21 11 001F C0A80001 C0A8000B DC04 01BB") + ALPN_H2 + AUTHORITY_EXAMPLE
V2_TCP6 = (SIG + bytes.fromhex("21 21 0024")
           + bytes.fromhex("20010db8000000000000000000000001") + bytes.fromhex("00000000000000000000ffff0a000001")
           + bytes.fromhex("3039 0050"))
V1_MAX_TCP6 = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
               b"65535 65535\r\n")
V1_MAX_UNKNOWN = V1_MAX_TCP6.replace(b"TCP6", b"UNKNOWN")


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def ok(data: bytes, accept: str = "any", **kw) -> pp.Result:
    result = pp.parse(data, accept, **kw)
    assert result.status is Status.OK, result.reason
    return result


def invalid(data: bytes, accept: str = "any", **kw) -> str:
    result = pp.parse(data, accept, **kw)
    assert result.status is Status.INVALID, result
    assert result.reason
    return result.reason


def assert_prefixes_need_more(data: bytes, accept: str = "any") -> None:
    """Every strict prefix is NEED_MORE: a header fed byte by byte never gets another verdict."""
    for cut in range(len(data)):
        assert pp.parse(data[:cut], accept).status is Status.NEED_MORE, (cut, data[:cut])


# ---------------------------------------------------------------------------------------------- v1

def test_v1_spec_example():
    r = ok(V1_EXAMPLE + b"GET / HTTP/1.0\r\n")
    assert (r.version, r.command, r.family, r.length) == (1, "PROXY", "TCP4", len(V1_EXAMPLE))
    assert r.src == Endpoint("192.168.0.1", 56324) and r.dst == Endpoint("192.168.0.11", 443)
    assert str(r.src) == "192.168.0.1:56324"
    assert r.tlvs == () and r.ssl is None
    assert_prefixes_need_more(V1_EXAMPLE)


def test_v1_tcp6_and_its_maximum_length():
    assert len(V1_MAX_TCP6) == 104 and len(V1_MAX_UNKNOWN) == 107
    r = ok(V1_MAX_TCP6)
    assert r.family == "TCP6" and r.src == Endpoint("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    assert ok(V1_MAX_UNKNOWN).length == 107
    assert_prefixes_need_more(V1_MAX_UNKNOWN)


def test_v1_tcp6_forms_are_reported_compressed():
    r = ok(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:10.0.0.1 1 2\r\n")
    assert r.src == Endpoint("2001:db8::1", 1) and r.dst == Endpoint("::ffff:10.0.0.1", 2)


def test_v1_unknown_bare_and_with_ignored_rest():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 what ever\r\n", b"PROXY UNKNOWN \r\n"):
        r = ok(line + b"payload")
        assert (r.family, r.src, r.dst, r.length) == ("UNKNOWN", None, None, len(line))
        assert_prefixes_need_more(line)


def test_v1_over_107_bytes_without_crlf_is_invalid():
    line = V1_MAX_UNKNOWN[:-2] + b"0\r\n"                     # 108 bytes
    assert "107" in invalid(line)
    assert "107" in invalid(b"PROXY UNKNOWN " + b"x" * 93)     # 107 bytes, still no CRLF
    assert pp.parse(b"PROXY UNKNOWN " + b"x" * 92).status is Status.NEED_MORE
    assert "107" in invalid(b"PROXY UNKNOWN " + b"x" * 92 + b"\r")  # CR at byte 107: its LF would be 108th


@pytest.mark.parametrize("line", [
    b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n",    # double space
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",    # trailing space
    b"PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",         # missing field
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 1\r\n",   # extra field
    b"PROXY TCP4 192.168.0.1\t192.168.0.11 56324 443\r\n",    # tab
    b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n",   # leading zeros in an octet
    b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.256 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 ::1 ::1 56324 443\r\n",                      # v6 under TCP4
    b"PROXY TCP6 192.168.0.1 192.168.0.11 56324 443\r\n",     # v4 under TCP6
    b"PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n",             # scope
    b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",    # leading zero in a port
    b"PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",     # port > 65535
    b"PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 100000 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 +80 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 0x1bb\r\n",
    b"PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY \r\n",
    b"PROXY\r\n",
    b"proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",       # LF without CR
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n",
    b"PROXY TCP4 192.168.0.1\r192.168.0.11 56324 443\r\n",    # lone CR
    b"PROXY TCP4 192.168.0.1\n192.168.0.11 56324 443\r\n",    # lone LF
    b"PROXY UNKNOWN \xff\r\n",                                 # non-ASCII
    b"PROXY UNKNOWN \x00\r\n",
])
def test_v1_malformed_lines(line):
    invalid(line)
    for cut in range(len(line)):                  # prefixes: NEED_MORE or already INVALID, never OK
        assert pp.parse(line[:cut]).status is not Status.OK


def test_v1_port_bounds_and_zero():
    r = ok(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
    assert r.src == Endpoint("0.0.0.0", 0) and r.dst == Endpoint("255.255.255.255", 65535)


def test_lone_cr_or_lf_is_invalid_before_the_line_ends():
    assert "lone" in invalid(b"PROXY TCP4 1.2.3.4\n")
    assert "lone" in invalid(b"PROXY TCP4 1.2.3.4\rX")
    assert pp.parse(b"PROXY TCP4 1.2.3.4\r").status is Status.NEED_MORE


# ---------------------------------------------------------------------------------------------- v2

def test_v2_spec_worked_example_every_field():
    assert V2_TCP4[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    r = ok(V2_TCP4 + b"payload")
    assert (r.version, r.command, r.family, r.length) == (2, "PROXY", "TCP4", 28)
    assert r.src == Endpoint("192.168.0.1", 56324) and r.dst == Endpoint("192.168.0.11", 443)
    assert r.tlvs == ()
    assert_prefixes_need_more(V2_TCP4)


def test_v2_spec_example_with_alpn_and_authority():
    assert len(V2_TCP4_TLVS) == 16 + 0x1F
    r = ok(V2_TCP4_TLVS)
    assert r.tlvs == ((0x01, b"h2"), (0x02, b"example.com"))
    assert r.alpn == "h2" and r.authority == "example.com"
    assert r.tlv(pp.TLV_AUTHORITY) == b"example.com" and r.tlv(pp.TLV_SSL) is None
    assert pp.build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443),
                       tlvs=[pp.tlv_alpn("h2"), pp.tlv_authority("example.com")]) == V2_TCP4_TLVS
    assert_prefixes_need_more(V2_TCP4_TLVS)


def test_v2_tcp6_and_mapped_addresses():
    r = ok(V2_TCP6)
    assert r.family == "TCP6" and r.length == 16 + 36
    assert r.src == Endpoint("2001:db8::1", 12345) and r.dst == Endpoint("::ffff:10.0.0.1", 80)
    assert str(r.src) == "[2001:db8::1]:12345"


@pytest.mark.parametrize("fam,name", [(0x12, "UDP4"), (0x22, "UDP6")])
def test_v2_datagram_families(fam, name):
    size = 12 if fam == 0x12 else 36
    block = bytes(range(1, size - 3)) + bytes.fromhex("0001 0002")
    r = ok(SIG + bytes([0x21, fam]) + size.to_bytes(2, "big") + block)
    assert r.family == name and r.src.port == 1 and r.dst.port == 2


def test_v2_unix_addresses():
    header = SIG + bytes.fromhex("21 31 00D8") + unix_block(b"/run/client.sock", b"/run/epollmux.sock")
    r = ok(header)
    assert r.family == "UNIX_STREAM" and r.length == 16 + 216
    assert r.src == Endpoint("/run/client.sock", None) and str(r.dst) == "unix:/run/epollmux.sock"
    r = ok(SIG + bytes.fromhex("21 32 00D8") + unix_block(b"\0abstract", b"x" * 108))
    assert r.family == "UNIX_DGRAM" and r.src.host == "@abstract" and r.dst.host == "x" * 108
    assert pp.build_v2("unix:/run/client.sock", "unix:/run/epollmux.sock") == header


def test_v2_local_with_len_is_skipped():
    r = ok(SIG + bytes.fromhex("20 00 0000") + b"payload")
    assert (r.command, r.family, r.src, r.dst, r.tlvs, r.length) == ("LOCAL", "UNSPEC", None, None, (), 16)
    body = bytes.fromhex("C0A80001 C0A8000B DC04 01BB") + ALPN_H2 + b"\x03\x00\x04junk"  # CRC not checked
    header = SIG + bytes.fromhex("20 11") + len(body).to_bytes(2, "big") + body
    r = ok(header + b"payload")
    assert (r.command, r.src, r.tlvs, r.length) == ("LOCAL", None, (), len(header))
    assert_prefixes_need_more(header)
    assert ok(SIG + bytes.fromhex("20 FF 0003 000000")).length == 19   # family ignored under LOCAL
    assert pp.build_v2(None, None, local=True) == SIG + bytes.fromhex("20 00 0000")


def test_v2_unspec_skips_the_block():
    r = ok(SIG + bytes.fromhex("21 00 0000"))
    assert (r.command, r.family, r.src, r.dst) == ("PROXY", "UNSPEC", None, None)
    r = ok(SIG + bytes.fromhex("21 00 0005 0102030405") + b"after")
    assert r.length == 21 and r.tlvs == ()
    assert pp.build_v2(None, ("1.2.3.4", 5)) == SIG + bytes.fromhex("21 00 0000")


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x01, 0xF1, 0x22, 0x2F])
def test_v2_bad_version_or_command(ver_cmd):
    header = SIG + bytes([ver_cmd]) + V2_TCP4[13:]
    invalid(header)
    assert pp.parse(header[:13]).status is Status.INVALID   # decided by the 13th byte already


@pytest.mark.parametrize("fam", [0x01, 0x10, 0x13, 0x23, 0x33, 0x41, 0xFF])
def test_v2_unknown_family_under_proxy(fam):
    assert "family" in invalid(SIG + bytes([0x21, fam]) + b"\x00\x00")
    assert pp.parse(SIG + bytes([0x21, fam])).status is Status.INVALID


@pytest.mark.parametrize("fam,need", [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216), (0x32, 216)])
def test_v2_len_shorter_than_the_address_block(fam, need):
    header = SIG + bytes([0x21, fam]) + (need - 1).to_bytes(2, "big")
    assert "shorter" in invalid(header)                    # decided from the 16 fixed bytes alone


def test_v2_len_cap():
    header = SIG + bytes.fromhex("21 11") + (4096 - 0).to_bytes(2, "big")
    assert pp.parse(header).status is Status.NEED_MORE
    assert "cap" in invalid(SIG + bytes.fromhex("21 11 1001"))
    assert "cap" in invalid(SIG + bytes.fromhex("21 11 FFFF"))
    assert pp.parse(SIG + bytes.fromhex("21 11 FFFF"), max_v2_len=65535).status is Status.NEED_MORE
    assert "cap" in invalid(V2_TCP4_TLVS, max_v2_len=30)


def test_v2_signature_mismatch_is_invalid_at_the_first_wrong_byte():
    for i in range(12):
        bad = bytearray(V2_TCP4)
        bad[i] ^= 0x40
        assert pp.parse(bytes(bad[:i + 1])).status is Status.INVALID
        assert pp.parse(bytes(bad[:i])).status is Status.NEED_MORE


@pytest.mark.parametrize("tlvs,reason", [
    (b"\x01\x00", "truncated"),
    (b"\x01", "truncated"),
    (b"\x01\x00\x05h2", "overruns"),
    (ALPN_H2 + ALPN_H2, "twice"),
    (AUTHORITY_EXAMPLE + AUTHORITY_EXAMPLE, "twice"),
    (b"\x05\x00\x81" + b"u" * 129, "UNIQUE_ID"),
    (b"\x20\x00\x04\x01\x00\x00\x00", "shorter than 5"),
    (b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09", "overruns"),
    (b"\x20\x00\x07\x01\x00\x00\x00\x00\x21\x00", "truncated"),
    (b"\x03\x00\x02\x00\x00", "not 4"),
    (b"\x03\x00\x04\x00\x00\x00\x00", "CRC32C mismatch"),
])
def test_v2_bad_tlvs(tlvs, reason):
    header = SIG + bytes.fromhex("21 11") + (12 + len(tlvs)).to_bytes(2, "big") + V2_TCP4[16:] + tlvs
    assert reason in invalid(header)
    assert_prefixes_need_more(header)


def test_v2_repeated_unknown_and_noop_tlvs_are_kept_in_order():
    tlvs = b"\x04\x00\x00" + b"\xe0\x00\x01a" + b"\xe0\x00\x01b" + b"\x04\x00\x02\x00\x00"
    header = SIG + bytes.fromhex("21 11") + (12 + len(tlvs)).to_bytes(2, "big") + V2_TCP4[16:] + tlvs
    r = ok(header)
    assert r.tlvs == ((0x04, b""), (0xE0, b"a"), (0xE0, b"b"), (0x04, b"\0\0"))
    assert r.tlv(0xE0) == b"a"


# ---------------------------------------------------------------------------------------------- CRC32C

@pytest.mark.parametrize("data,crc", [
    (b"123456789", 0xE3069283),                            # the CRC catalogue check value
    (bytes(32), 0x8A9136AA),                               # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0),
])
def test_crc32c_vectors(data, crc):
    assert pp.crc32c(data) == crc
    assert pp.crc32c(data[5:], pp.crc32c(data[:5])) == crc


def test_v2_crc32c_hand_built_header_and_every_bit_flip():
    body = V2_TCP4[16:] + b"\x03\x00\x04\x00\x00\x00\x00"
    header = SIG + bytes.fromhex("21 11") + len(body).to_bytes(2, "big") + body
    crc = pp.crc32c(header)                                 # computed with the field zeroed, sent big-endian
    header = header[:-4] + struct.pack("!I", crc)
    assert pp.build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), crc=True) == header
    r = ok(header)
    assert r.tlvs[-1] == (pp.TLV_CRC32C, struct.pack("!I", crc))
    for i in range(len(header)):
        for bit in range(8):
            bad = bytearray(header)
            bad[i] ^= 1 << bit
            result = pp.parse(bytes(bad))
            assert result.status is not Status.OK or result.tlv(pp.TLV_CRC32C) is None, (i, bit)
    assert "mismatch" in invalid(header[:-1] + bytes([header[-1] ^ 1]))


# ---------------------------------------------------------------------------------------------- SSL TLV

SSL_VALUE = (bytes.fromhex("07 00000000")
             + b"\x21\x00\x07TLSv1.3"
             + b"\x22\x00\x0cclient\xc3\xa9-one"
             + b"\x23\x00\x16TLS_AES_256_GCM_SHA384"
             + b"\x24\x00\x0aRSA-SHA256"
             + b"\x25\x00\x07RSA2048"
             + b"\x26\x00\x06X25519"
             + b"\x27\x00\x13rsa_pss_rsae_sha256"
             + b"\x28\x00\x03\x30\x01\x00")


def test_ssl_tlv_every_field_from_hand_bytes():
    tlv = b"\x20" + len(SSL_VALUE).to_bytes(2, "big") + SSL_VALUE
    header = SIG + bytes.fromhex("21 11") + (12 + len(tlv)).to_bytes(2, "big") + V2_TCP4[16:] + tlv
    info = ok(header).ssl
    assert info.client == pp.CLIENT_SSL | pp.CLIENT_CERT_CONN | pp.CLIENT_CERT_SESS and info.verify == 0
    assert info.ssl and info.cert_verified
    assert info.version == "TLSv1.3" and info.cn == "client\u00e9-one"
    assert info.cipher == "TLS_AES_256_GCM_SHA384"
    assert (info.sig_alg, info.key_alg) == ("RSA-SHA256", "RSA2048")
    assert (info.group, info.sig_scheme, info.client_cert) == ("X25519", "rsa_pss_rsae_sha256", b"\x30\x01\x00")
    assert [t.type for t in info.subtlvs] == list(range(0x21, 0x29))
    built = pp.tlv_ssl(client=7, verify=0, version="TLSv1.3", cn="client\u00e9-one",
                       cipher="TLS_AES_256_GCM_SHA384", sig_alg="RSA-SHA256", key_alg="RSA2048",
                       group="X25519", sig_scheme="rsa_pss_rsae_sha256", client_cert=b"\x30\x01\x00")
    assert built == (0x20, SSL_VALUE)


def test_ssl_tlv_without_client_cert():
    info = ok(pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[pp.tlv_ssl(version="TLSv1.2")])).ssl
    assert info.client == pp.CLIENT_SSL and info.verify == 1 and info.ssl and not info.cert_verified
    assert info.cn is None and info.subtlvs == ((0x21, b"TLSv1.2"),)
    assert pp.tlv_ssl(client=0) == (0x20, b"\x00\x00\x00\x00\x01")
    with pytest.raises(ValueError):
        pp.tlv_ssl(client=256)


def test_other_tlv_builders():
    assert pp.tlv_alpn(b"http/1.1") == (0x01, b"http/1.1") and pp.tlv_alpn("h2") == (0x01, b"h2")
    assert pp.tlv_authority("b\u00fccher.example") == (0x02, "b\u00fccher.example".encode())
    assert pp.tlv_unique_id(b"u" * 128) == (0x05, b"u" * 128)
    assert pp.tlv_noop(3) == (0x04, b"\0\0\0") and pp.tlv_noop() == (0x04, b"")
    assert pp.tlv_netns("blue") == (0x30, b"blue")
    with pytest.raises(ValueError):
        pp.tlv_unique_id(b"u" * 129)
    r = ok(pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[pp.tlv_unique_id(b"id-1"), pp.tlv_netns("blue"),
                                                     pp.tlv_noop(2)]))
    assert (r.unique_id, r.netns) == (b"id-1", "blue")


# ---------------------------------------------------------------------------------------------- builders

def test_build_v1_forms_and_families():
    assert pp.build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == V1_EXAMPLE
    assert pp.build_v1("192.168.0.1:56324", "192.168.0.11:443") == V1_EXAMPLE
    assert pp.build_v1((socket.AF_INET, "192.168.0.1", 56324), Endpoint("192.168.0.11", 443)) == V1_EXAMPLE
    assert pp.build_v1(("::1", 5, 0, 0), "[2001:db8::1]:6") == b"PROXY TCP6 ::1 2001:db8::1 5 6\r\n"
    assert pp.build_v1(("fe80::1%lo", 5, 0, 1), ("::1", 6)) == b"PROXY TCP6 fe80::1 ::1 5 6\r\n"
    assert pp.build_v1(None, "1.2.3.4:5") == b"PROXY UNKNOWN\r\n"
    assert pp.build_v1("unix:/a", "unix:/b") == b"PROXY UNKNOWN\r\n"


def test_build_mapped_addresses():
    # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: both sides v4 -> TCP4
    assert pp.build_v1(("::ffff:10.0.0.1", 5, 0, 0), ("::ffff:127.0.0.1", 443, 0, 0)) == \
        b"PROXY TCP4 10.0.0.1 127.0.0.1 5 443\r\n"
    # families still differ -> the IPv4 one is mapped into IPv6
    assert pp.build_v1("10.0.0.1:5", "[2001:db8::1]:443") == b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 5 443\r\n"
    r = ok(pp.build_v2("[2001:db8::1]:5", "10.0.0.1:443"))
    assert r.family == "TCP6" and r.dst == Endpoint("::ffff:10.0.0.1", 443)
    r = ok(pp.build_v2("[::ffff:10.0.0.1]:5", "10.0.0.2:443"))
    assert r.family == "TCP4" and r.src == Endpoint("10.0.0.1", 5)


def test_build_v2_dgram_and_mixed_unix():
    assert ok(pp.build_v2("1.2.3.4:1", "5.6.7.8:2", dgram=True)).family == "UDP4"
    assert ok(pp.build_v2("unix:@a", "unix:/b", dgram=True)).family == "UNIX_DGRAM"
    assert ok(pp.build_v2("unix:/a", "1.2.3.4:5")).family == "UNSPEC"


@pytest.mark.parametrize("call", [
    lambda: pp.build_v1("1.2.3.4", "5.6.7.8:1"),
    lambda: pp.build_v1("::1:80", "5.6.7.8:1"),
    lambda: pp.build_v1("[::1]80", "5.6.7.8:1"),
    lambda: pp.build_v1("1.2.3.4:70000", "5.6.7.8:1"),
    lambda: pp.build_v1(("1.2.3.4", -1), "5.6.7.8:1"),
    lambda: pp.build_v1(("not-an-ip", 1), "5.6.7.8:1"),
    lambda: pp.build_v1(12, "5.6.7.8:1"),
    lambda: pp.build_v2("unix:/" + "x" * 108, "unix:/b"),
    lambda: pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[(0xE0, b"x" * 65536)]),
    lambda: pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[(0xE0, b"x" * 65000), (0xE1, b"x" * 600)]),
    lambda: pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[(256, b"")]),
    lambda: pp.build_v2(None, None, local=True, crc=True),
])
def test_build_refuses_what_does_not_fit(call):
    with pytest.raises(ValueError):
        call()


def test_accept_modes():
    assert pp.parse(V1_EXAMPLE, "v1").status is Status.OK
    assert pp.parse(V2_TCP4, "v2").status is Status.OK
    assert "v1" in invalid(V2_TCP4, "v1") and "v1" in invalid(V2_TCP4[:1], "v1")
    assert "v2" in invalid(V1_EXAMPLE, "v2") and "v2" in invalid(b"P", "v2")
    for accept in pp.ACCEPT:
        assert pp.parse(b"", accept).status is Status.NEED_MORE
        invalid(b"GET / HTTP/1.1\r\n", accept)
        invalid(b"\x16\x03\x01", accept)
        invalid(b"SSH-2.0-x\r\n", accept)
    with pytest.raises(ValueError):
        pp.parse(V1_EXAMPLE, "v3")


def test_parse_takes_bytearray_and_memoryview():
    assert pp.parse(bytearray(V2_TCP4_TLVS)) == pp.parse(V2_TCP4_TLVS)
    assert pp.parse(memoryview(V1_EXAMPLE)) == pp.parse(V1_EXAMPLE)


# ---------------------------------------------------------------------------------------------- properties

VECTORS = [V1_EXAMPLE, V1_MAX_TCP6, V1_MAX_UNKNOWN, V2_TCP4, V2_TCP4_TLVS, V2_TCP6,
           pp.build_v2("1.2.3.4:1", "5.6.7.8:2", tlvs=[pp.tlv_ssl(version="TLSv1.3")], crc=True)]

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(pp.ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(pp.ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)
endpoints = st.tuples(st.one_of(ipv4, ipv6), ports)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
known_tlvs = st.one_of(
    st.binary(min_size=1, max_size=20).map(pp.tlv_alpn),
    texts.map(pp.tlv_authority),
    st.binary(max_size=128).map(pp.tlv_unique_id),
    st.integers(0, 30).map(pp.tlv_noop),
    st.builds(pp.tlv_ssl, client=st.integers(0, 7), verify=st.integers(0, 2**32 - 1),
              version=st.none() | texts, cn=st.none() | texts, cipher=st.none() | texts,
              sig_alg=st.none() | texts, key_alg=st.none() | texts,
              client_cert=st.none() | st.binary(max_size=50)),
    st.tuples(st.integers(0xE0, 0xEF), st.binary(max_size=30)),
)


def unique_types(tlvs):
    seen = [t[0] for t in tlvs if t[0] in (pp.TLV_ALPN, pp.TLV_AUTHORITY, pp.TLV_UNIQUE_ID, pp.TLV_SSL)]
    return len(seen) == len(set(seen))


def expected_endpoints(src, dst):
    """What the header must carry for src, dst: the builder's documented family rule."""
    s, d = (pp.ipaddress.ip_address(h) for h in (src[0], dst[0]))
    s = s.ipv4_mapped or s if s.version == 6 else s
    d = d.ipv4_mapped or d if d.version == 6 else d
    if s.version != d.version:
        s, d = (pp.ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip for ip in (s, d))
    return Endpoint(pp.ip_text(s), src[1]), Endpoint(pp.ip_text(d), dst[1])


@settings(max_examples=300, deadline=None)
@given(src=endpoints, dst=endpoints, tlvs=st.lists(known_tlvs, max_size=6), crc=st.booleans(),
       tail=st.binary(max_size=8))
def test_v2_round_trip(src, dst, tlvs, crc, tail):
    assume(unique_types(tlvs))
    header = pp.build_v2(src, dst, tlvs=tlvs, crc=crc)
    r = pp.parse(header + tail, "v2", max_v2_len=65535)
    assert r.status is Status.OK and r.length == len(header)
    assert (r.src, r.dst) == expected_endpoints(src, dst)
    assert r.tlvs[:len(tlvs)] == tuple(tuple(t) for t in tlvs)
    assert len(r.tlvs) == len(tlvs) + crc
    for t in tlvs:
        if t[0] == pp.TLV_SSL:
            assert pp.tlv_ssl(**{k: getattr(r.ssl, k) for k in ("client", "verify", "version", "cn", "cipher",
                                 "sig_alg", "key_alg", "client_cert")}) == t


@settings(max_examples=300, deadline=None)
@given(src=endpoints, dst=endpoints, tail=st.binary(max_size=8))
def test_v1_round_trip(src, dst, tail):
    line = pp.build_v1(src, dst)
    assert len(line) <= pp.V1_MAX_LEN
    r = pp.parse(line + tail, "v1")
    assert r.status is Status.OK and r.length == len(line)
    assert (r.src, r.dst) == expected_endpoints(src, dst)


@settings(max_examples=100, deadline=None)
@given(src=st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=60),
       dst=st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",)), max_size=20))
def test_unix_round_trip(src, dst):
    assume(len(("/" + dst).encode()) <= 108)
    r = pp.parse(pp.build_v2("unix:/" + src, "unix:/" + dst))
    assert r.status is Status.OK and (r.src.host, r.dst.host) == ("/" + src, "/" + dst)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=200).map(lambda b: b"PROXY " + b),
                      st.binary(max_size=200).map(lambda b: SIG + b),
                      st.binary(max_size=100).map(lambda b: SIG + b"\x21\x11\x00\x0c" + b)),
       accept=st.sampled_from(pp.ACCEPT))
def test_random_bytes_never_raise_and_verdicts_are_prefix_stable(data, accept):
    full = pp.parse(data, accept)
    assert isinstance(full, pp.Result)
    if full.status is Status.OK:
        assert 0 < full.length <= len(data)
    for cut in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1, full.length - 1}):
        if 0 <= cut < len(data):
            part = pp.parse(data[:cut], accept)
            assert part.status in (Status.NEED_MORE, full.status), (cut, part, full)
            if part.status is Status.OK:
                assert part == full


@settings(max_examples=400, deadline=None)
@given(which=st.sampled_from(VECTORS), pos=st.integers(0, 10_000), value=st.integers(0, 255),
       cuts=st.lists(st.integers(1, 40), max_size=10))
def test_mutated_vectors_never_raise_and_chunking_never_changes_the_verdict(which, pos, value, cuts):
    data = bytearray(which)
    data[pos % len(data)] = value
    data = bytes(data)
    full = pp.parse(data)
    fed, verdicts = 0, []
    for size in cuts + [len(data)]:
        fed = min(len(data), fed + size)
        verdicts.append(pp.parse(data[:fed]))
    assert verdicts[-1] == full
    assert all(v.status is Status.NEED_MORE or v == full or v.status is full.status for v in verdicts)


def test_every_vector_byte_by_byte():
    for vector in VECTORS:
        assert_prefixes_need_more(vector)
        assert ok(vector).length == len(vector)


# Captured from HAProxy 2.6.12 terminating TLS 1.3 (EC P-256 cert, client cert "pp-client" verified, SNI
# pp.example.test, ALPN h2) with `send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,
# authority,crc32c,unique-id`: HAProxy puts CRC32C first and the SSL sub-TLVs in the order 21 22 25 24 23.
HAPROXY_26_TLS_CAPTURE = bytes.fromhex(
    "0d0a0d0a000d0a515549540a211100957f0000017f000001a30a9c510300043ded9995010002683202000f70702e6578616d70"
    "6c652e746573740500153132372e302e302e313a34313733385f34303031372000500700000000210007544c5376312e332200"
    "0970702d636c69656e74250005454332353624001165636473612d776974682d534841323536230016544c535f4145535f3235"
    "365f47434d5f534841333834")


def test_captured_haproxy_tls_header():
    r = ok(HAPROXY_26_TLS_CAPTURE)
    assert r.length == len(HAPROXY_26_TLS_CAPTURE) == 16 + 0x95
    assert r.src == Endpoint("127.0.0.1", 41738) and r.dst == Endpoint("127.0.0.1", 40017)
    assert [t.type for t in r.tlvs] == [0x03, 0x01, 0x02, 0x05, 0x20]
    assert (r.alpn, r.authority, r.unique_id) == ("h2", "pp.example.test", b"127.0.0.1:41738_40017")
    assert r.ssl == pp.SSLInfo(client=7, verify=0, version="TLSv1.3", cn="pp-client",
                               cipher="TLS_AES_256_GCM_SHA384", sig_alg="ecdsa-with-SHA256", key_alg="EC256",
                               subtlvs=r.ssl.subtlvs)
    assert [t.type for t in r.ssl.subtlvs] == [0x21, 0x22, 0x25, 0x24, 0x23]
    assert_prefixes_need_more(HAPROXY_26_TLS_CAPTURE)
