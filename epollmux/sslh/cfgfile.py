"""Reads sslh's libconfig config file into the sslh `Model`; the only module that imports libconf.

Owns: parsing (syntax errors as `FILE: line N: message`), checking each setting against the option
table (unknown keys, wrong types: `FILE: [protocols.2] host: message`, entries counted from 0 as
libconfig paths are) and the values' plain types (libconfig's lists and arrays become Python lists).
Must not import configobj, argparse or anything that serves connections.
"""

from __future__ import annotations

import os

import libconf

from epollmux.sslh import options
from epollmux.sslh.model import Entry, Model, Problems

_TYPES = {"bool": bool, "int": int, "0|1": int, "0|1|2": int, "seconds": (int, float),
          "string": str, "name": str, "path": str, "probe": str, "builtin|regex": str,
          "[globs]": list, "[patterns]": list}


def read(path: str, model: Model, problems: Problems) -> None:
    """Add the file's settings to `model`; every problem found goes to `problems`."""
    model.config_file = path
    try:
        with open(path, encoding="utf-8") as f:
            tree = libconf.load(f, includedir=os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        problems.errors.append(f"{path}: cannot read: {exc.strerror}")
        return
    except UnicodeDecodeError as exc:
        problems.errors.append(f"{path}: not UTF-8 text: {exc.reason}")
        return
    except libconf.ConfigParseError as exc:
        message = str(exc).replace(" in '<unknown>',", ",").replace(f" in '{path}',", ",")
        problems.errors.append(f"{path}: syntax: {message}")
        return
    for key, value in tree.items():
        if key in ("listen", "protocols"):
            if not isinstance(value, (list, tuple)):
                problems.error(path, "global", key, "expected a list of groups: ( { ... }, ... )")
                continue
            for index, group in enumerate(value):
                entry = _entry(path, f"{key}.{index}", options.LISTEN if key == "listen" else options.PROTOCOL,
                               group, problems)
                if entry is not None:
                    (model.listen if key == "listen" else model.protocols).append(entry)
            continue
        option = options.find(options.GLOBAL, key)
        if option is None:
            problems.error(path, "global", key, "unknown setting")
            continue
        value = _checked(path, "global", key, option, value, problems)
        if value is not None:
            model.set_global(path, option.key, value)


def _entry(path: str, where: str, section: str, group, problems: Problems) -> Entry | None:
    if not isinstance(group, dict):
        problems.error(path, where, "", "expected a group: { key = value; ... }")
        return None
    entry = Entry(path, where)
    for key, value in group.items():
        option = options.find(section, key)
        if option is None:
            problems.error(path, where, key, "unknown setting")
            continue
        value = _checked(path, where, key, option, value, problems)
        if value is not None:
            entry.keys[option.key] = value
    return entry


def _checked(path: str, where: str, key: str, option: options.Option, value, problems: Problems):
    """The value in its plain Python type, or None (reported) when libconfig gave another type."""
    if isinstance(value, tuple):
        value = list(value)
    want = _TYPES.get(option.argument)
    if want is None:
        return value
    if want is bool and isinstance(value, int) and not isinstance(value, bool):
        return bool(value)      # libconfig users write 0/1 for booleans too
    if want is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key == "port":
        return str(value)       # port: 443 (a number) is common and unambiguous
    if want is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        problems.error(path, where, key, "expected a list of strings: [ \"a\", \"b\" ]")
        return None
    if want is int and isinstance(value, bool) and option.key.startswith("verbose"):
        return int(value)       # sslh's own example.cfg says `verbose: true`
    if want in (int, (int, float)) and isinstance(value, bool):
        problems.error(path, where, key, f"expected a number, got {value!r}")
        return None
    if not isinstance(value, want):
        names = {bool: "true or false", int: "an integer", str: "a string"}
        problems.error(path, where, key, f"expected {names.get(want, 'a number')}, got {value!r}")
        return None
    return value
