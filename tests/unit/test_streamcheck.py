"""The stress suite's byte checker (tests/support/streamcheck.py) catches what it is there for: an injected
duplicate of a whole 65,483-byte segment (the size once seen twice in a kernel relay run), a lost range, a
cut stream, corruption, in full and prefix (connection cut on purpose) mode."""

from __future__ import annotations

import random

import pytest

from support.streamcheck import check, first_difference

SEG = 65_483


@pytest.fixture(scope="module")
def sent() -> bytes:
    return random.Random(16).randbytes(8 * SEG + 12345)


def test_equal_streams_and_prefixes_pass(sent):
    assert check(sent, sent) is None
    assert check(sent[:SEG * 3 + 7], sent, prefix=True) is None
    assert check(b"", sent, prefix=True) is None and check(b"", b"") is None


@pytest.mark.parametrize("at", [0, SEG, 3 * SEG + 1, 8 * SEG + 12345])
def test_an_injected_duplicate_segment_is_found_with_its_offset(sent, at):
    start = max(0, at - SEG)
    got = sent[:at] + sent[start:at] + sent[at:]
    k = at - start
    if k == 0:                          # nothing before offset 0 to repeat: duplicate the next segment
        got = sent[:SEG] + sent
        assert check(got, sent) == f"duplicated {SEG} bytes at offset {SEG} (a second copy of sent[0:{SEG}])"
        return
    assert check(got, sent) == f"duplicated {k} bytes at offset {at} (a second copy of sent[{start}:{at}])"


def test_a_duplicate_inside_a_cut_stream_is_found(sent):
    got = (sent[:2 * SEG] + sent[SEG:2 * SEG] + sent[2 * SEG:])[:5 * SEG]
    assert check(got, sent, prefix=True) == (f"duplicated {SEG} bytes at offset {2 * SEG} "
                                             f"(a second copy of sent[{SEG}:{2 * SEG}])")


def test_a_lost_range_and_a_short_stream_are_found(sent):
    got = sent[:SEG] + sent[2 * SEG:]
    assert check(got, sent) == f"lost {SEG} bytes at offset {SEG} (sent[{SEG}:{2 * SEG}])"
    assert check(got, sent, prefix=True).startswith(f"lost {SEG} bytes at offset {SEG}")
    assert check(sent[:-100], sent) == f"lost 100 bytes at the end (offset {len(sent) - 100}, got " \
                                      f"{len(sent) - 100} of {len(sent)})"


def test_corruption_and_a_second_fault_are_reported(sent):
    got = bytearray(sent)
    got[1000] ^= 0xFF
    assert check(bytes(got), sent).startswith("corrupted from offset 1000")
    twice = sent[:SEG] + sent[:SEG] + sent[SEG:-10]
    assert check(twice, sent).endswith("more differences after it")


def test_first_difference():
    assert first_difference(b"abcdef", b"abcxef") == 3
    assert first_difference(b"abc", b"abcdef") == 3
    assert first_difference(b"", b"x") == 0
