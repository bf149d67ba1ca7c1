"""The README's "Close reasons" table lists exactly the members of reasons.Reason, with their meanings,
and every close reason a module can produce is a member."""

from __future__ import annotations

import re
from pathlib import Path

from epollmux import errors
from epollmux.reasons import MEANING, Reason
from epollmux.tls.engine import CloseReason

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[str, str]:
    text = README.read_text()
    section = text.split("\n## Close reasons\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", section, re.M)}


def test_readme_table_equals_the_enum():
    table = readme_table()
    assert set(table) - {r.value for r in Reason} == set(), "README rows that are no Reason member"
    assert {r.value for r in Reason} - set(table) == set(), "Reason members missing from the README"
    assert table == {r.value: MEANING[r] for r in Reason}


def test_every_member_has_one_meaning():
    assert set(MEANING) == set(Reason)
    assert all(meaning and "\n" not in meaning for meaning in MEANING.values())


def test_tls_reasons_are_members_on_both_legs():
    for reason in CloseReason:
        assert isinstance(reason.on(""), Reason) and isinstance(reason.on("backend-"), Reason)


def test_errno_reasons_are_members():
    for err in range(1, 134):
        assert isinstance(errors.connect_reason(err), Reason)
        assert isinstance(errors.relay_reason(OSError(err, "")), Reason)
