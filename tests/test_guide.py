"""Every ``python`` block of docs/guide.md is a complete program that runs; blocks marked
``<!-- fragment: ... -->`` on the line before are compiled only (they show a call's shape)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

GUIDE = (Path(__file__).parent.parent / "docs" / "guide.md").read_text()
_BLOCK = re.compile(r"(<!-- fragment:[^>]*-->\n)?```python\n(.*?)```", re.S)
BLOCKS = [(bool(m.group(1)), m.group(2), GUIDE.count("\n", 0, m.start()) + 1)
          for m in _BLOCK.finditer(GUIDE)]
PROGRAMS = [(code, line) for fragment, code, line in BLOCKS if not fragment]
FRAGMENTS = [(code, line) for fragment, code, line in BLOCKS if fragment]


def test_the_guide_has_programs_and_few_fragments():
    assert len(PROGRAMS) >= 8 and len(FRAGMENTS) <= 2


@pytest.mark.parametrize("code, line", PROGRAMS, ids=[f"line{line}" for _, line in PROGRAMS])
def test_every_program_runs(code, line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # sqlite:///runwire.db lands here
    module = f"guide_line{line}"
    namespace = {"__name__": module}
    sys.modules[module] = type(sys)(module)  # attrs and dataclasses look their module up
    try:
        exec(compile(code, f"docs/guide.md:{line}", "exec"), namespace)
    finally:
        del sys.modules[module]
    assert capsys.readouterr().out  # every program shows what it did


@pytest.mark.parametrize("code, line", FRAGMENTS, ids=[f"line{line}" for _, line in FRAGMENTS])
def test_every_fragment_compiles(code, line):
    compile(code, f"docs/guide.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
