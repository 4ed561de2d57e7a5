"""The fuzz target's properties, replayed on its seeds and on every input it ever broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fuzz_codec import check

HERE = Path(__file__).parent
INPUTS = sorted((HERE / "seeds").iterdir()) + sorted((HERE / "regressions").iterdir())


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_input_keeps_its_properties(path):
    check(path.read_bytes())


def test_there_are_regressions_to_replay():
    assert any(p.parent.name == "regressions" for p in INPUTS)
