"""docs/protocol.md must describe every frame type the code knows, with its fields."""

import re
from pathlib import Path

import pytest

from runwire.transport import FRAME_TYPES
from runwire.transport._codec import frame_fields

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize("kind", sorted(FRAME_TYPES))
def test_every_frame_type_is_documented(kind):
    assert f'"type":"{kind}"' in DOC, f"docs/protocol.md never shows a {kind!r} frame"


@pytest.mark.parametrize("kind", sorted(FRAME_TYPES))
def test_documented_fields_exist(kind):
    fields = set(frame_fields(FRAME_TYPES[kind])) | {"type"}
    for example in re.findall(r'\{"type":"' + re.escape(kind) + r'"[^`|\n]*\}', DOC):
        named = set(re.findall(r'"([a-z_]+)":', example))
        unknown = named - fields
        assert not unknown, f"docs show {kind!r} with fields the code lacks: {unknown}"
