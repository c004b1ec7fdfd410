"""Copy each experiment's results table (results/experiments/<name>/README.md, written by its command)
into EXPERIMENTS.md between the ``<!-- experiments:start -->`` and ``:end`` markers, in the order of
`EXPERIMENTS` (one line per experiment: add a new experiment's module name there).

    python -m experiments.render_readme
"""
from __future__ import annotations

from repspec_zoo.evaluation.leaderboard import update_readme

from .common import RESULTS, ROOT

#: the document the sections go into (README.md links to it)
DOCUMENT = ROOT / "EXPERIMENTS.md"

#: experiment modules (experiments/<name>.py, results in results/experiments/<name>/), in document order
EXPERIMENTS = (
    "xor_toy",
    "slp_fmnist",
    "transfer_digits",
    "roth_fmnist",
    "ssl_fmnist",
    "bn_resnet_fmnist",
)


def section(name: str) -> str:
    """The experiment's README, headings one level down (its title becomes a ``##`` section),
    links made relative to the project root (where the document lies)."""
    text = (RESULTS / name / "README.md").read_text()
    prefix = (RESULTS / name).relative_to(ROOT).as_posix()
    text = text.replace("](", f"]({prefix}/").replace(f"]({prefix}/http", "](http")
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    present = [name for name in EXPERIMENTS if (RESULTS / name / "README.md").is_file()]
    update_readme(DOCUMENT, "\n\n".join(section(name) for name in present), section="experiments")
    print(f"{DOCUMENT.name}: experiments {', '.join(present)}")


if __name__ == "__main__":
    main()
