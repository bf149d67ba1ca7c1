"""Per-source admission: connection and sniffing counts, token-bucket rate, bounded memory (clock injected)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epollmux.reasons import Reason
from epollmux.serve.limits import Limits

LIMIT_RATE, LIMIT_SNIFFING, LIMIT_SOURCE = Reason.LIMIT_RATE, Reason.LIMIT_SNIFFING, Reason.LIMIT_SOURCE


def burst(limits: Limits, ip: str, n: int, now: float = 0.0) -> list:
    return [limits.admit(ip, now) for _ in range(n)]


def test_max_per_source_is_hit_exactly_at_its_number():
    lim = Limits(max_per_source=10)
    results = burst(lim, "192.0.2.1", 100)
    assert results[:10] == [None] * 10 and set(results[10:]) == {LIMIT_SOURCE}
    assert lim.connections("192.0.2.1") == 10
    assert lim.admit("192.0.2.2", 0) is None                   # another source is not affected
    lim.release("192.0.2.1")
    assert lim.admit("192.0.2.1", 0) is None and lim.admit("192.0.2.1", 0) == LIMIT_SOURCE


def test_rate_is_a_token_bucket_with_burst_equal_to_the_rate():
    lim = Limits(rate_per_source=5)
    assert burst(lim, "192.0.2.1", 8) == [None] * 5 + [LIMIT_RATE] * 3
    assert lim.admit("192.0.2.1", 0.1) == LIMIT_RATE            # half a token
    assert lim.admit("192.0.2.1", 0.2) is None                  # one token after 1/5 s
    assert lim.admit("192.0.2.1", 0.2) == LIMIT_RATE
    assert burst(lim, "192.0.2.1", 7, now=100.0) == [None] * 5 + [LIMIT_RATE] * 2   # never more than burst
    assert lim.admit("192.0.2.9", 0.2) is None


def test_slow_rate_and_explicit_burst():
    lim = Limits(rate_per_source=0.5)                           # burst: at least one token
    assert [lim.admit("192.0.2.1", t) for t in (0, 1.0, 1.9, 2.0)] == [None, LIMIT_RATE, LIMIT_RATE, None]
    lim = Limits(rate_per_source=1, burst=3)
    assert burst(lim, "192.0.2.1", 4) == [None, None, None, LIMIT_RATE]
    with pytest.raises(ValueError):
        Limits(rate_per_source=1, burst=0.5)


def test_refusals_change_no_count_and_consume_no_token():
    lim = Limits(max_per_source=2, rate_per_source=3)
    assert burst(lim, "192.0.2.1", 4) == [None, None, LIMIT_SOURCE, LIMIT_SOURCE]
    lim.release("192.0.2.1")
    lim.release("192.0.2.1")
    assert burst(lim, "192.0.2.1", 3) == [None, LIMIT_RATE, LIMIT_RATE]   # 1 token was left, not 0
    assert lim.connections("192.0.2.1") == 1
    assert lim.admit("192.0.2.1", 1 / 3) is None                # and rate refusals took none either


def test_sniffing_limit_is_hit_exactly_and_freed():
    lim = Limits(max_sniffing_per_source=3)
    ip = "192.0.2.1"
    assert burst(lim, ip, 5) == [None] * 5                      # no per-source connection limit here
    assert [lim.sniff_started(ip) for _ in range(5)] == [None] * 3 + [LIMIT_SNIFFING] * 2
    assert lim.sniffing(ip) == 3
    lim.sniff_ended(ip)
    assert lim.sniff_started(ip) is None and lim.sniff_started(ip) == LIMIT_SNIFFING
    assert lim.sniff_started("192.0.2.2") is None


def test_unbalanced_calls_raise():
    lim = Limits(max_per_source=1)
    with pytest.raises(ValueError):
        lim.release("192.0.2.1")
    with pytest.raises(ValueError):
        lim.sniff_ended("192.0.2.1")
    lim.admit("192.0.2.1", 0)
    lim.release("192.0.2.1")
    with pytest.raises(ValueError):
        lim.release("192.0.2.1")
    lim.admit("192.0.2.1", 0)
    with pytest.raises(ValueError):
        lim.sniff_ended("192.0.2.1")                            # admitted but never sniffing


def test_mapped_and_scoped_addresses_are_one_source():
    lim = Limits(max_per_source=2)
    assert lim.admit("::ffff:192.0.2.1", 0) is None
    assert lim.admit(ipaddress.ip_address("192.0.2.1"), 0) is None
    assert lim.admit("192.0.2.1", 0) == LIMIT_SOURCE
    lim.release("::ffff:192.0.2.1")
    assert lim.connections("192.0.2.1") == 1
    assert lim.key("::ffff:192.0.2.1") == lim.key("192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    assert lim.key("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_ipv6_prefix_groups_a_host():
    lim = Limits(max_per_source=2, ipv6_prefix=64)
    assert lim.admit("2001:db8:0:1::1", 0) is None
    assert lim.admit("2001:db8:0:1:ffff::2", 0) is None
    assert lim.admit("2001:db8:0:1::3", 0) == LIMIT_SOURCE
    assert lim.admit("2001:db8:0:2::1", 0) is None
    assert lim.admit("192.0.2.1", 0) is None                    # IPv4 is never grouped
    assert Limits(max_per_source=1).key("2001:db8::1") != Limits(max_per_source=1).key("2001:db8::2")
    with pytest.raises(ValueError):
        Limits(ipv6_prefix=129)


def test_disabled_limits_still_balance_and_hold_nothing_afterwards():
    lim = Limits()
    assert not lim.enabled and Limits(rate_per_source=1).enabled
    assert burst(lim, "192.0.2.1", 1000) == [None] * 1000
    assert lim.sniff_started("192.0.2.1") is None
    assert len(lim) == 1
    lim.sniff_ended("192.0.2.1")
    for _ in range(1000):
        lim.release("192.0.2.1")
    assert len(lim) == 0
    with pytest.raises(ValueError):
        Limits(max_per_source=-1)


def test_without_rate_a_source_is_forgotten_when_its_counts_reach_zero():
    lim = Limits(max_per_source=5, max_sniffing_per_source=5)
    lim.admit("192.0.2.1", 0)
    lim.sniff_started("192.0.2.1")
    lim.sniff_ended("192.0.2.1")
    assert len(lim) == 1
    lim.release("192.0.2.1")
    assert len(lim) == 0
    assert lim.sniff_started("192.0.2.2") is None and len(lim) == 1
    lim.sniff_ended("192.0.2.2")
    assert len(lim) == 0


def test_reconnecting_cannot_reset_the_bucket_and_full_buckets_are_dropped():
    lim = Limits(rate_per_source=2)
    assert burst(lim, "192.0.2.1", 2) == [None, None]
    lim.release("192.0.2.1")
    lim.release("192.0.2.1")
    assert len(lim) == 1                                        # idle, bucket empty: remembered
    assert lim.admit("192.0.2.1", 0.1) == LIMIT_RATE
    assert lim.prune(0.5) == 0 and len(lim) == 1
    assert lim.prune(1.0) == 1 and len(lim) == 0                # refilled: forgotten
    assert burst(lim, "192.0.2.1", 3, now=1.0) == [None, None, LIMIT_RATE]


def test_admit_drops_refilled_idle_sources_as_it_passes():
    lim = Limits(rate_per_source=10)
    for i in range(50):
        ip = f"192.0.2.{i}"
        assert lim.admit(ip, 0) is None
        lim.release(ip)
    assert len(lim) == 50
    for i in range(25):                                         # two refilled idle sources go per admit
        assert lim.admit("198.51.100.1", 10.0 + i) is None
        assert len(lim) == 50 - 2 * (i + 1) + 1
    assert lim.connections("198.51.100.1") == 25 and len(lim) == 1


def test_scan_from_many_addresses_is_bounded():
    lim = Limits(max_per_source=4, max_sniffing_per_source=2, rate_per_source=1, max_idle_sources=100)
    for i in range(20000):
        ip = str(ipaddress.IPv4Address(0x0A000000 + i))
        assert lim.admit(ip, i * 1e-6) is None
        assert lim.sniff_started(ip) is None
        lim.sniff_ended(ip)
        lim.release(ip)
        assert len(lim) <= 100
    # a live connection is never evicted
    assert lim.admit("192.0.2.1", 1.0) is None
    for i in range(1000):
        ip = str(ipaddress.IPv4Address(0x0B000000 + i))
        lim.admit(ip, 1.0)
        lim.release(ip)
    assert lim.connections("192.0.2.1") == 1 and len(lim) <= 101
    lim.release("192.0.2.1")


def test_clock_going_backwards_neither_refills_nor_crashes():
    lim = Limits(rate_per_source=1)
    assert lim.admit("192.0.2.1", 100.0) is None
    assert lim.admit("192.0.2.1", 50.0) == LIMIT_RATE
    assert lim.admit("192.0.2.1", 100.5) == LIMIT_RATE
    assert lim.admit("192.0.2.1", 101.0) is None


# ---------------------------------------------------------------------------------------------- model check

class Model:
    """The documented rules written the obvious way: no memory bound, every source kept forever."""

    def __init__(self, max_conns: int, max_sniff: int, rate: int, burst_: int):
        self.max_conns, self.max_sniff, self.rate, self.burst = max_conns, max_sniff, rate, burst_
        self.conns: dict[str, int] = {}
        self.sniff: dict[str, int] = {}
        self.bucket: dict[str, tuple[float, float]] = {}

    def admit(self, ip: str, now: float):
        if self.max_conns and self.conns.get(ip, 0) >= self.max_conns:
            return LIMIT_SOURCE
        if self.rate:
            tokens, stamp = self.bucket.get(ip, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
            stamp = max(stamp, now)
            if tokens < 1:
                self.bucket[ip] = (tokens, stamp)
                return LIMIT_RATE
            self.bucket[ip] = (tokens - 1, stamp)
        self.conns[ip] = self.conns.get(ip, 0) + 1
        return None


ops = st.lists(st.tuples(st.sampled_from(["admit", "release", "sniff", "unsniff"]), st.integers(0, 3),
                         st.integers(0, 3)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_conns=st.integers(0, 3), max_sniff=st.integers(0, 3), rate=st.sampled_from([0, 1, 2, 4]),
       extra_burst=st.integers(0, 2))
def test_agrees_with_a_simple_model(ops, max_conns, max_sniff, rate, extra_burst):
    burst_ = rate + extra_burst if rate else None
    lim = Limits(max_conns, max_sniff, rate, burst=burst_)
    model = Model(max_conns, max_sniff, rate, burst_ or 1)
    now = 0.0
    for op, who, step in ops:
        now += step * 0.25                                      # exact binary fractions: no rounding drift
        ip = f"192.0.2.{who}"
        if op == "admit":
            assert lim.admit(ip, now) == model.admit(ip, now)
        elif op == "release" and model.conns.get(ip):
            lim.release(ip)
            model.conns[ip] -= 1
        elif op == "sniff":
            expect = LIMIT_SNIFFING if max_sniff and model.sniff.get(ip, 0) >= max_sniff else None
            assert lim.sniff_started(ip) == expect
            if expect is None:
                model.sniff[ip] = model.sniff.get(ip, 0) + 1
        elif op == "unsniff" and model.sniff.get(ip):
            lim.sniff_ended(ip)
            model.sniff[ip] -= 1
        assert lim.connections(ip) == model.conns.get(ip, 0) and lim.sniffing(ip) == model.sniff.get(ip, 0)
