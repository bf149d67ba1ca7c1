"""What an sslh invocation describes, read from its command line and config file, before translation.

Owns: `Model` (globals, listen entries, protocol entries, in order) and `Entry` (one listen or protocols
element: where it came from, for messages, and its keys with sslh's values); `Problems` collects the
errors and notices as lines `SOURCE: [where] key: message`.
Must not import argparse, libconf, configobj or anything of epollmux's serving side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    source: str         # the file, or "command line"
    where: str          # "listen.0", "protocols.2", "--ssh"
    keys: dict[str, Any] = field(default_factory=dict)    # key with underscores -> value as sslh read it


@dataclass
class Model:
    globals: dict[str, Any] = field(default_factory=dict)     # key with underscores -> value
    global_where: dict[str, str] = field(default_factory=dict)   # key -> source it was set by
    listen: list[Entry] = field(default_factory=list)
    protocols: list[Entry] = field(default_factory=list)
    config_file: str | None = None

    def set_global(self, source: str, key: str, value: Any) -> None:
        self.globals[key] = value
        self.global_where[key] = source


class Problems:
    """Errors (the run is refused) and notices (said once at start) in the `FILE: [path] key: msg` form."""

    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []   # cross-key findings (checks.run), already in sslh's terms
        self._notices: dict[tuple[str, str, str], list[str]] = {}     # (source, key, message) -> wheres
        self.unresolvable = False       # an address that does not resolve: sslh's exit code 4
        self.bad_option = False         # a command-line value sslh's parser refuses: exit code 6

    @staticmethod
    def line(source: str, where: str, key: str, message: str) -> str:
        place = f"[{where}] {key}" if key else f"[{where}]"
        return f"{source}: {place}: {message}"

    def error(self, source: str, where: str, key: str, message: str) -> None:
        self.errors.append(self.line(source, where, key, message))

    def has(self, source: str, where: str, key: str = "") -> bool:
        """An error about this entry (and key, if given) is already reported."""
        head = self.line(source, where, key, "") if key else f"{source}: [{where}]"
        return any(e.startswith(head) for e in self.errors)

    def notice(self, source: str, where: str, key: str, message: str) -> None:
        """Said once per option: the entries that set it are listed together."""
        wheres = self._notices.setdefault((source, key, message), [])
        if where not in wheres:
            wheres.append(where)

    @property
    def notices(self) -> list[str]:
        return [self.line(source, ", ".join(wheres), key, message)
                for (source, key, message), wheres in self._notices.items()]
