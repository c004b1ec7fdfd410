"""Every Python snippet of README.md (and the package docstring's) runs as written, offline.

Each block runs on its own, in a fresh namespace: a reader may copy any one of them. A block that
needs the network says so in its first line (``# needs network: ...``, visible in the README) and
is skipped with that reason; no other block is skipped.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import repspec_zoo

ROOT = Path(__file__).resolve().parents[1]
NETWORK = "# needs network:"


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def docstring_block() -> str:
    """The literal block after the package docstring's ``::``."""
    return textwrap.dedent(repspec_zoo.__doc__.split("::\n", 1)[1])


SNIPPETS = {**{f"README.md python block {i + 1}": code for i, code in enumerate(readme_blocks())},
            "repspec_zoo docstring": docstring_block()}


def test_the_readme_has_python_blocks_and_at_most_one_needs_network():
    assert len(readme_blocks()) >= 2
    assert sum(code.startswith(NETWORK) for code in readme_blocks()) <= 1


@pytest.mark.parametrize("where", list(SNIPPETS))
def test_snippet_runs_as_written(where):
    code = SNIPPETS[where]
    if code.startswith(NETWORK):
        pytest.skip(f"{where}: {code.splitlines()[0][2:]}")
    exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
