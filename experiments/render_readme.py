"""Copy each experiment's results table (results/experiments/<name>/README.md, written by its command)
into the project README between the ``<!-- experiments:start -->`` and ``:end`` markers.

    python -m experiments.render_readme
"""
from __future__ import annotations

from repspec_zoo.leaderboard import update_readme

from .common import RESULTS, ROOT

EXPERIMENTS = ("xor_toy", "slp_fmnist", "transfer_digits", "roth_fmnist", "ssl_fmnist")


def section(name: str) -> str:
    """The experiment's README, headings two levels down, links made relative to the project root."""
    text = (RESULTS / name / "README.md").read_text()
    prefix = (RESULTS / name).relative_to(ROOT).as_posix()
    text = text.replace("](", f"]({prefix}/").replace(f"]({prefix}/http", "](http")
    return "\n".join("##" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    present = [name for name in EXPERIMENTS if (RESULTS / name / "README.md").is_file()]
    update_readme(ROOT / "README.md", "\n\n".join(section(name) for name in present), section="experiments")
    print(f"README.md: experiments {', '.join(present)}")


if __name__ == "__main__":
    main()
