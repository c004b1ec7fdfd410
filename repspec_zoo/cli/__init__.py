"""`repspec-zoo` command line: one module with ``main(argv)`` per subcommand (``python -m repspec_zoo.cli``).

The subcommands import the library; the library never imports this package."""
from __future__ import annotations

import argparse
import sys


def _list(argv) -> None:
    """Print the zoo's registered architectures."""
    import timm

    from ..models.registry import ARCHS
    from ..regularizers.registry import REGULARIZERS

    for name, (base, mode) in ARCHS.items():
        regularizer = REGULARIZERS[mode].label
        print(f"{name:28s} base={base:14s} regularizer={regularizer:16s} registered={name in timm.list_models()}")


COMMANDS = {
    "leaderboard": ("benchmark the bundled zoo backbones: accuracy, TA distances, bounds, plot",
                    "repspec_zoo.cli.leaderboard"),
    "list": ("list the zoo's architectures", None),
    "eval": ("benchmark any backbone: clean accuracy and black-box attack distances", "repspec_zoo.cli.eval"),
    "probe": ("fit a linear probe on a frozen backbone, then its accuracy and attack distances", "repspec_zoo.cli.probe"),
    "analyze": ("Jacobian spectra, PGD alignment, linearity and robust accuracy of any backbone",
                "repspec_zoo.cli.analyze"),
    "list-pretrained": ("list the zoo's pretrained models: dataset, gamma, accuracy, TA distance, source",
                        "repspec_zoo.cli.list_pretrained"),
    "export": ("write the Hub-ready folder (weights, config, card, eval) of a training run",
               "repspec_zoo.cli.export"),
    "publish": ("export a training run and upload it to a Hugging Face Hub repo", "repspec_zoo.cli.publish"),
}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:{width}s}  {help_}" for name, (help_, _) in COMMANDS.items())
        msg = f"usage: repspec-zoo COMMAND [options]\n\ncommands:\n{lines}\n\n'repspec-zoo COMMAND --help' for options"
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"repspec-zoo: unknown command {argv[0]!r}\n\n{msg}")
        print(msg)
        return
    command, rest = argv[0], argv[1:]
    import repspec_zoo  # noqa: F401  (registers the zoo with timm)

    if command == "list":
        argparse.ArgumentParser(prog="repspec-zoo list", description=_list.__doc__).parse_args(rest)
        _list(rest)
        return
    import importlib

    importlib.import_module(COMMANDS[command][1]).main(rest)

