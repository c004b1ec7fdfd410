"""`repspec-zoo list-pretrained`: the zoo's pretrained models and what this machine has of them (no network)."""
from __future__ import annotations

from ..models.zoo import list_pretrained
from . import Parser


def _fmt(value, width: int, spec: str) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def main(argv: list[str]) -> None:
    Parser(prog="repspec-zoo list-pretrained", description=__doc__).parse_args(argv)
    print(f"{'name':36s} {'dataset':14s} {'gamma':>7s} {'clean_acc':>9s} {'l2 mean':>8s} {'success':>7s} "
          f"{'@queries':>8s}  {'source':8s} attack")
    for row in list_pretrained():
        print(f"{row.name:36s} {row.dataset:14s} {_fmt(row.gamma, 7, '.0e')} {_fmt(row.clean_acc, 9, '.4f')} "
              f"{_fmt(row.l2_mean, 8, '.4f')} {_fmt(row.success_rate, 7, '.3f')} {_fmt(row.queries, 8, 'd')}  "
              f"{row.source:8s} {row.attack or '-'}")
