"""The README's "Architecture" section stays true: its tree names every subpackage and module, and its
table of what each part must not import is test_layering's table."""

from __future__ import annotations

import re
from pathlib import Path

from test_layering import MUST_NOT_IMPORT, PACKAGE, SUBPACKAGES

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    return README.read_text().split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]


def tree_line(prefix: str) -> str:
    lines = [line for line in section().splitlines() if re.match(rf"^(├── |└── )?{re.escape(prefix)}\s", line)]
    assert len(lines) == 1, f"one tree line for {prefix}"
    return lines[0]


def test_the_tree_names_every_subpackage_and_module():
    for part, folder in [("epollmux/", PACKAGE)] + [(f"{sub}/", PACKAGE / sub) for sub in SUBPACKAGES]:
        assert folder.is_dir(), part
        words = set(re.findall(r"\w+", tree_line(part)))
        stems = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__"}
        assert stems <= words, f"README \"Architecture\": the tree line of {part} misses {sorted(stems - words)}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(SUBPACKAGES)


def test_the_import_table_is_the_layering_table():
    rows = {}
    for match in re.finditer(r"^\| (`[^|]+) \| [^|]+ \| ([^|]+) \|$", section(), re.M):
        rule = match.group(2).strip()
        for part in re.findall(r"`(\w+)/?`", match.group(1)):
            rows[part] = rule
    assert set(SUBPACKAGES) <= set(rows), "every subpackage has a row"
    for part, forbidden in MUST_NOT_IMPORT.items():
        if forbidden == {"*"}:
            expected = "nothing else of epollmux"
        elif "*" in forbidden:
            expected = "nothing else but " + ", ".join(f"`{n[1:]}`" for n in sorted(forbidden) if n.startswith("!"))
        else:
            expected = ", ".join(f"`{n}`" for n in sorted(forbidden - {"__main__"}))
        assert rows.get(part) == expected, part
