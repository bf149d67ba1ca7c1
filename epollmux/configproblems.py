"""The words of the configuration's error messages: "FILE: [section] key: message".

Owns: configobj's syntax errors in that form (the section a line is in, its key, its number),
validate's range errors with the allowed range, unknown sections and keys with a close match, and
the problem list `config.py` fills. Takes configobj's exception and spec objects as given; does not
import configobj (config.py is the one module that does).
Must not import anything of epollmux.
"""

from __future__ import annotations

import difflib
import re

TOP_SECTIONS = ("global", "metrics", "listen", "routes")
SYNTAX_WORDS = {"Duplicate keyword name": "key given twice in this section",
                "Duplicate section name": "section given twice",
                "Section too nested": "section nested too deep (at most [[name]] inside a section)",
                "Parse error in value": "cannot parse the value (an unclosed quote?)"}


def spec_keys(section) -> list[str]:
    """The keys the configspec knows for a section of the file."""
    spec = getattr(section, "configspec", None)
    return [k for k in (spec.scalars if spec is not None else ()) if k != "__many__"]


def syntax_problems(source: str, exc, lines: list[str]) -> list[str]:
    """configobj's parse errors in the usual form: the section the line is in, its key, the line number."""
    out = []
    for error in getattr(exc, "errors", None) or [exc]:
        number = getattr(error, "line_number", None)
        if number is None:
            out.append(f"{source}: {error}")
            continue
        text = (getattr(error, "line", "") or "").strip()
        section = section_at(lines, number - 1)
        key = text.partition("=")[0].strip() if "=" in text and not text.startswith("[") else ""
        message = str(getattr(error, "msg", error)).split(" at line ")[0].rstrip(".")
        if message.startswith("Invalid line"):
            message = f"'{text}' is neither a [section] header nor key = value"
        message = SYNTAX_WORDS.get(message, message)
        where = f"[{section}] {key}" if key else f"[{section}]"
        out.append(f"{source}: {where}: line {number}: {message}")
    return out


def section_at(lines: list[str], index: int) -> str:
    """The dotted section in force at lines[index] (the headers above it); "global" before any."""
    path: list[str] = []
    for line in lines[:index]:
        text = line.split("#", 1)[0].strip()
        if not (text.startswith("[") and text.endswith("]")):
            continue
        depth = len(text) - len(text.lstrip("["))
        if depth == len(text) - len(text.rstrip("]")):
            path = path[:depth - 1] + [text.strip("[] ")]
    return ".".join(path) or "global"


def value_message(cfg, sections, key: str, error) -> str:
    """validate's message, plus the allowed range when the value is out of it."""
    message = str(error)
    if type(error).__name__ not in ("VdtValueTooSmallError", "VdtValueTooBigError"):
        return message
    spec = cfg.configspec
    for s in sections:
        spec = spec[s] if s in spec else spec["__many__"]
    check = spec.get(key, "") if hasattr(spec, "get") else ""
    low = re.search(r"\bmin=([-\d.e]+)", check)
    high = re.search(r"\bmax=([-\d.e]+)", check)
    if low and high:
        allowed = f"from {low.group(1)} to {high.group(1)}"
    elif low:
        allowed = f"at least {low.group(1)}"
    elif high:
        allowed = f"at most {high.group(1)}"
    else:
        return message
    value = message.split('"')[1] if message.count('"') >= 2 else "?"
    side = "small" if type(error).__name__ == "VdtValueTooSmallError" else "big"
    return f"{value} is too {side}: allowed {allowed}"


class Problems:
    """Collects problems, each as \"FILE: [section] key: message\"."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, sections, key: str, message: str) -> None:
        section = ".".join(sections) if sections else "global"
        where = f"[{section}] {key}" if key else f"[{section}]"
        self.items.append(f"{self.source}: {where}: {message}")

    def add_unknown(self, cfg, extras) -> None:
        """Every section and key configobj's get_extra_values found that the spec does not know."""
        for sections, name in extras:
            where = cfg
            for s in sections:
                where = where[s]
            if not sections:
                self.add_top(name, isinstance(where[name], dict))
            elif isinstance(where[name], dict):
                self.add(sections, name, "unknown section")
            else:
                self.add_unknown_key(sections, name, spec_keys(where), spec_keys(cfg["global"]))

    def add_unknown_key(self, sections, key: str, known, global_known) -> None:
        """A key the section does not know, with the known key it is closest to: of this section, or of
        [global] (a global-only key written in a route)."""
        known = list(known)
        close = difflib.get_close_matches(key, known + [k for k in global_known if k not in known], n=1)
        hint = ""
        if close:
            hint = f"; did you mean {close[0]}?" + ("" if close[0] in known else " (a [global] key)")
        self.add(sections, key, f"unknown key{hint}")

    def add_top(self, name: str, is_section: bool) -> None:
        """Something at the top of the file that is not one of the known sections."""
        if is_section:
            close = difflib.get_close_matches(name, TOP_SECTIONS, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            self.items.append(f"{self.source}: [{name}]: unknown section (the sections are "
                              f"{', '.join(f'[{s}]' for s in TOP_SECTIONS)}){hint}")
        else:
            self.items.append(f"{self.source}: {name}: a key before any section header (put it under "
                              "[global] or the section it belongs to)")
