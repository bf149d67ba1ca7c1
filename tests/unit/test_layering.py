"""The layers hold: what each part of epollmux must not import (checked with ast over every module),
every module imports alone in a fresh interpreter (no cycles), no module reaches for another module's
private names, and no module passes the size limit."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "epollmux"
MAX_LINES = 460

# part -> the parts of epollmux it must not import. A part is a subpackage or a top-level module;
# "*" is every other part, "!name" an exception to it.
SUBPACKAGES = ("wire", "tls", "relay", "serve", "process", "observe", "tools", "sslh")
ABOVE_SERVE = {"process", "tools", "sslh", "cli", "checks", "__main__"}
MUST_NOT_IMPORT = {
    "reasons": {"*"},
    "states": {"*"},
    "errors": {"*", "!reasons"},
    "addr": {"*"},
    "reactor": {"*", "!errors"},
    "wire": {"tls", "relay", "serve", "process", "observe", "tools", "sslh", "reactor", "config", "cli",
             "checks", "acl"},
    "tls": {"wire", "relay", "serve", "process", "observe", "tools", "sslh", "reactor", "config", "cli",
            "checks", "acl", "addr"},
    "relay": {"wire", "serve", "process", "observe", "tools", "sslh", "config", "cli", "checks", "acl"},
    "observe": {"tls", "relay", "serve", "process", "tools", "sslh", "cli", "checks"},
    "serve": ABOVE_SERVE,
    "process": {"tools", "sslh", "cli", "__main__"},
    "tools": {"relay", "serve", "process"},
    "config": {"relay", "serve", "process", "observe", "tools", "sslh", "cli", "reactor"},
    "configproblems": {"*"},
}
# module -> modules of its own subpackage it must not import (the docstrings' "Must not import" lines).
MODULE_MUST_NOT_IMPORT = {
    "serve/flows.py": {"epollmux.serve.udplistener", "epollmux.serve.listener", "epollmux.serve.connection",
                       "epollmux.wire.probes", "epollmux.wire.udpprobes"},
    "serve/armed.py": {"epollmux.serve.listener", "epollmux.serve.udplistener", "epollmux.serve.connection",
                       "epollmux.serve.flows", "epollmux.wire"},
    "serve/udpdrops.py": {"epollmux.serve.flows", "epollmux.serve.udplistener", "epollmux.serve.listener",
                          "epollmux.serve.connection", "epollmux.wire"},
    "serve/udplistener.py": {"epollmux.serve.connection", "epollmux.serve.listener", "epollmux.wire"},
    "serve/listener.py": {"epollmux.serve.flows", "epollmux.serve.udplistener"},
    "serve/connection.py": {"epollmux.serve.flows", "epollmux.serve.udplistener"},
}
# Private names of other modules that may be used, with why.
PRIVATE_ALLOWED = {
    ("serve/listener.py", "_accept"),          # socket.socket._accept: the one place for private CPython socket calls
    ("tls/options.py", "_ssl"),                # ssl._ssl._test_decode_cert: reads a certificate without a new dependency
    ("tls/options.py", "_test_decode_cert"),
    ("process/workerproc.py", "_exit"),        # os._exit, public despite the name
    ("tools/manpage.py", "_action_groups"),    # argparse internals: the man page is generated from the parser
    ("tools/manpage.py", "_group_actions"),
    ("tools/manpage.py", "_actions"),
    ("sslh/cmdline.py", "_actions"),           # argparse internals, as for the man page
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(name: str) -> str | None:
    """The part of a dotted epollmux name: its subpackage or top-level module; None for the package."""
    bits = name.split(".")
    return bits[1] if len(bits) > 1 else None


def epollmux_imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("epollmux")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("epollmux"):
            found.add(node.module)
            if node.module == "epollmux":      # from epollmux import config, errors
                found |= {f"epollmux.{a.name}" for a in node.names if not a.name.startswith("__")}
            else:
                found |= {f"{node.module}.{a.name}" for a in node.names
                          if (PACKAGE / node.module.split(".", 1)[1].replace(".", "/") / f"{a.name}.py").exists()}
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers(path):
    part = part_of(dotted(path))
    forbidden = MUST_NOT_IMPORT.get(part, set())
    everything = set(SUBPACKAGES) | {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    if "*" in forbidden:
        forbidden = everything - {part} - {name[1:] for name in forbidden if name.startswith("!")}
    bad = sorted(name for name in epollmux_imports(ast.parse(path.read_text()))
                 if part_of(name) in forbidden and part_of(name) != part)
    assert not bad, f"{part} must not import {bad}"


@pytest.mark.parametrize("where", sorted(MODULE_MUST_NOT_IMPORT))
def test_module_rules(where):
    imported = epollmux_imports(ast.parse((PACKAGE / where).read_text()))
    bad = sorted(name for name in imported for rule in MODULE_MUST_NOT_IMPORT[where]
                 if name == rule or name.startswith(rule + "."))
    assert not bad, f"{where} must not import {bad}"


def defined_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):     # __slots__ entries
            names.add(node.value)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_reach_back(path):
    """`x._name` (x not self or cls) must name something this module defines; `from m import _name` never."""
    tree = ast.parse(path.read_text())
    own = defined_names(tree)
    where = str(path.relative_to(PACKAGE))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("epollmux"):
            bad += [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr not in own and (where, node.attr) not in PRIVATE_ALLOWED:
                bad.append(ast.unparse(node))
    assert not bad, f"{where} uses other modules' private names: {bad}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines < MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: split the job it does"


def test_each_module_imports_alone():
    """A fresh interpreter per module: an import cycle or a module that only works after another was
    imported fails here."""
    names = [dotted(p) for p in modules() if p.stem != "__main__"]

    def load(name: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        return name, done.stderr.strip().splitlines()[-1] if done.returncode else ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = {name: err for name, err in pool.map(load, names) if err}
    assert not failed


# part -> the third-party packages it may import (parts not listed are not checked here).  wire stays
# free of sockets and I/O: besides the standard library it may use `cryptography`, for QUIC Initials only.
THIRD_PARTY_ALLOWED = {"wire": {"cryptography"}}


@pytest.mark.parametrize("path", [p for p in modules() if part_of(dotted(p)) in THIRD_PARTY_ALLOWED],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_third_party_imports(path):
    allowed = THIRD_PARTY_ALLOWED[part_of(dotted(path))] | set(sys.stdlib_module_names) | {"epollmux"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add((node.module or "").split(".")[0])
    assert found <= allowed, f"{path.name} imports {sorted(found - allowed)}"
