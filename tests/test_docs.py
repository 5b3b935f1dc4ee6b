"""The threat table in docs/security.md names tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`([\w/]+\.py)::(\w+)`")


def test_security_doc_tests_exist() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    references = REFERENCE.findall(text)

    assert len(references) >= 20
    for path, name in references:
        source = (ROOT / "tests" / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), (
            f"docs/security.md names {path}::{name}, which does not exist"
        )
