"""The user documents: README.md stays short and keeps the leaderboard's markers, EXPERIMENTS.md is
what `python -m experiments.render_readme` renders from results/experiments/, and every relative
link of README.md, EXPERIMENTS.md and docs/ points at a file or folder of the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments import render_readme

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "EXPERIMENTS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_at_most_250_lines_and_keeps_the_leaderboard_markers():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert text.count("<!-- leaderboard:start -->") == 1 and text.count("<!-- leaderboard:end -->") == 1
    assert "<!-- experiments:start -->" not in text


def test_experiments_document_is_rendered_from_the_results(tmp_path, monkeypatch):
    committed = (ROOT / "EXPERIMENTS.md").read_text()
    copy = tmp_path / "EXPERIMENTS.md"
    copy.write_text(committed.replace("## Experiment 1", "## stale", 1))
    monkeypatch.setattr(render_readme, "DOCUMENT", copy)
    render_readme.main()
    assert copy.read_text() == committed
    titles = [line for line in committed.splitlines() if line.startswith("## ")]
    for name in render_readme.EXPERIMENTS:  # each experiment's own title, once, as a section
        own = (render_readme.RESULTS / name / "README.md").read_text().splitlines()[0]
        assert titles.count("#" + own) == 1


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(document):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, f"{document.name} links nowhere"
    assert [t for t in local if not (document.parent / t).exists()] == []
