"""`repspec-zoo` command line: one module with ``main(argv)`` per subcommand (``python -m repspec_zoo.cli``).

The subcommands import the library; the library never imports this package. Every subcommand
answers an expected error (a `repspec_zoo.errors.UserError`, or a bad option) with one line,
``repspec-zoo CMD: error: MESSAGE``, and exit status 2; ``--debug`` anywhere on the command line
shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys

from ..errors import UserError

#: exit status of an expected error (argparse's usage-error status)
ERROR_STATUS = 2
#: exit status when stdout's reader closed the pipe early: 128 + SIGPIPE, as the shell reports other tools
BROKEN_PIPE_STATUS = 141


class UsageError(UserError):
    """A command line argparse rejects (unknown option, bad value, missing argument)."""


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser of a subcommand: lists ``--debug`` (which `main` takes anywhere) and
    raises `UsageError` instead of printing the usage block, so a bad option reads as one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")

    def error(self, message: str):
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _list(argv: list[str]) -> None:
    """Print the zoo's registered architectures."""
    Parser(prog="repspec-zoo list", description=_list.__doc__).parse_args(argv)
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


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name:{width}s}  {help_}" for name, (help_, _) in COMMANDS.items())
    return (f"usage: repspec-zoo COMMAND [options]\n\ncommands:\n{lines}\n\n'repspec-zoo COMMAND --help' for "
            "options; --debug shows the traceback of an error")


def _run(command: str, rest: list[str]) -> None:
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(f"unknown command {command!r}; {hint}'repspec-zoo --help' lists the commands")
    import repspec_zoo  # noqa: F401  (registers the zoo with timm)

    if command == "list":
        _list(rest)
        return
    import importlib

    importlib.import_module(COMMANDS[command][1]).main(rest)


def main(argv=None) -> int:
    """Run ``repspec-zoo COMMAND ...`` and return its exit status, 0 (the console script passes it
    to `sys.exit`); an expected error becomes one line on stderr and ``SystemExit(2)``. The
    subcommand's result (an EvalResult, ...) is not returned: a non-integer given to `sys.exit`
    would be printed to stderr with exit status 1. In-process callers who want the result call
    the subcommand module's ``main`` (e.g. `repspec_zoo.cli.eval.main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]  # before or after the command
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    try:
        _run(command, rest)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit-time flush
        return 0
    except BrokenPipeError:  # the reader went away (`repspec-zoo list | head`): stop as a SIGPIPE'd tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        raise SystemExit(BROKEN_PIPE_STATUS) from None
    except UserError as err:
        if debug:
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"repspec-zoo {command if command in COMMANDS else ''}".rstrip() + f": error: {message}",
              file=sys.stderr)
        raise SystemExit(ERROR_STATUS) from None
