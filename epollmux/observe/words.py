"""Counted nouns in what operators read ("1 listener", "2 workers"): one rule for every log line and report.

Owns: plural(). Must not import anything of epollmux.
"""


def plural(n: int, noun: str, many: str | None = None) -> str:
    """"1 worker", "0 workers", "3 workers"; `many` for nouns whose plural is not noun + s."""
    return f"{n} {noun}" if n == 1 else f"{n} {many or noun + 's'}"
