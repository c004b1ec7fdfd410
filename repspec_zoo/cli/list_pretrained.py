"""`repspec-zoo list-pretrained [--all]`: the zoo's pretrained weights on this machine (bundled or in the Hugging
Face cache), with their numbers; --all adds the zoo names whose weights are not here (no network either way)."""
from __future__ import annotations

from ..models.zoo import list_pretrained
from . import Parser


def _fmt(value, width: int, spec: str) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def main(argv: list[str]) -> None:
    parser = Parser(prog="repspec-zoo list-pretrained", description=__doc__)
    parser.add_argument("--all", action="store_true", help="also list the zoo names whose weights are not on this "
                                                           "machine (the first pretrained=True downloads them)")
    args = parser.parse_args(argv)
    rows = list_pretrained()
    shown = rows if args.all else [row for row in rows if row.source != "hub"]
    print(f"{'name':38s} {'dataset':14s} {'gamma':>7s} {'clean_acc':>9s} {'l2 mean':>8s} {'success':>7s} "
          f"{'@queries':>8s}  {'source':8s} attack")
    for row in shown:
        print(f"{row.name:38s} {row.dataset:14s} {_fmt(row.gamma, 7, '.0e')} {_fmt(row.clean_acc, 9, '.4f')} "
              f"{_fmt(row.l2_mean, 8, '.4f')} {_fmt(row.success_rate, 7, '.3f')} {_fmt(row.queries, 8, 'd')}  "
              f"{row.source:8s} {row.attack or '-'}")
    if len(shown) < len(rows):
        print(f"({len(rows) - len(shown)} more zoo names have no weights on this machine; "
              "repspec-zoo list-pretrained --all lists them)")
