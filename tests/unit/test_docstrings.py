"""Module docstrings resolve and hold the layering: no citation of a file the repository does not ship
(the project's design notes, shared research, parent folders), every module says what it owns and must
not import, and each layer's own docstring states test_layering's rule for it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from test_layering import MUST_NOT_IMPORT, PACKAGE, REPO, SUBPACKAGES, modules

OUTSIDE = re.compile(r"shared/|\bDESIGN\b|research/|STYLE\.md|DEVELOPERS|\.\./")


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_cites_only_what_the_repository_ships(path):
    text = path.read_text()
    assert not OUTSIDE.findall(text), f"cites files outside the repository: {OUTSIDE.findall(text)}"
    named = {m for m in re.findall(r"[\w./-]+\.md\b", text)}
    missing = {m for m in named if not (REPO / m).exists() and not any(REPO.rglob(Path(m).name))}
    assert not missing, f"names files the repository does not have: {missing}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_says_what_it_owns_and_must_not_import(path):
    doc = docstring(path)
    assert "Owns" in doc and "must not import" in doc.lower(), "module docstring lacks Owns / Must not import"
    layer = re.search(r"Must not import what (\w+)/ must not", doc)
    if layer:
        assert layer.group(1) == path.relative_to(PACKAGE).parts[0], "names another layer's rule"


def rule_line(part: str) -> str:
    path = PACKAGE / part / "__init__.py" if part in SUBPACKAGES else PACKAGE / f"{part}.py"
    doc = " ".join(docstring(path).split())
    found = re.search(r"Must not import[^.]*", doc)
    assert found, f"{path.relative_to(REPO)} states no rule"
    return found.group(0)


@pytest.mark.parametrize("part", sorted(MUST_NOT_IMPORT))
def test_each_layer_states_the_layering_rule(part):
    forbidden = MUST_NOT_IMPORT[part]
    line = rule_line(part)
    if forbidden == {"*"}:
        assert "anything of epollmux" in line and " but " not in line, line
    elif "*" in forbidden:
        allowed = {name[1:] for name in forbidden if name.startswith("!")}
        assert "anything of epollmux but" in line and set(re.findall(r"`(\w+)`", line)) == allowed, line
    else:
        assert set(re.findall(r"`(\w+)`", line)) == forbidden - {"__main__"}, line


ISSUE = re.compile(r"\bissues? #?\d+|\(issue \d+", re.IGNORECASE)


def test_no_docstring_names_an_issue_number():
    """Docstrings say what code does and cite README sections, not the tracker's history."""
    found = []
    for root in ("epollmux", "bench", "tests"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node) or ""
                    found += [f"{path.relative_to(REPO)}: {m}" for m in ISSUE.findall(doc)]
    assert found == []
