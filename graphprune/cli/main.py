"""Command line: ``graphprune demo | inspect | prune | bench | zoo``.

MODEL, wherever a command takes one, is an ``.onnx`` file, a Hugging Face folder, a folder
graphprune saved, ``package.module:factory`` or a zoo name (graphprune/io/sources.py). Tables go
to stdout, progress to stderr; ``--json`` prints machine-readable results instead of tables.
Every error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ..errors import GraphpruneError
from ..util.tables import use_rich
from .common import cli_words


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like graphprune's own (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# subcommand -> (module in graphprune.cli, one line of help). A module gives arguments(parser) and run(ns);
# only the command being run is imported, so `graphprune --help` does not load torch
COMMANDS = {
    "demo": ("demo", "prune a built-in model, check the oracle, export slim ONNX, print the table"),
    "inspect": ("inspect", "show a model's channel groups, what froze them, and its residual blocks"),
    "prune": ("prune", "prune MODEL into OUT (.onnx, .pt or a folder)"),
    "bench": ("bench", "latency of MODEL (and PRUNED beside it) in onnxruntime and PyTorch"),
    "zoo": ("zoo", "list the reference models"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    package = sys.modules.get(__package__.partition(".")[0])
    if package is not None and getattr(package, "__file__", None) is None:  # a folder without __init__.py
        # run beside a clone of graphprune: Python takes the clone's root folder, in the current folder, for the
        # package, and every command failed with a raw "module 'graphprune' has no attribute" AttributeError
        print(f"graphprune: error: the folder {list(package.__path__)[0]} (a clone's root, in the current folder) "
              "hides the installed graphprune from Python: run from another folder, or from inside the clone",
              file=sys.stderr)
        return 2
    p = _Parser(prog="graphprune", description="Graph-level structured pruning compiler: prune a "
                                "model into a smaller dense one whose outputs are proven against the original.")
    sub = p.add_subparsers(dest="cmd", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        if name == wanted:
            command = importlib.import_module(f"{__package__}.{module}")
            command.arguments(sp)
            sp.set_defaults(run=command.run)
    ns = p.parse_args(argv)
    # rich tables on a terminal (GRAPHPRUNE_RICH=1/0 forces them on/off); plain text in pipes and --json
    rich_env = os.environ.get("GRAPHPRUNE_RICH")
    use_rich(not getattr(ns, "json", False) and (rich_env == "1" if rich_env in ("0", "1") else sys.stdout.isatty()))
    try:
        with warnings.catch_warnings():  # a warning is one line too, without the source line Python shows
            warnings.showwarning = lambda message, category, *_a, **_k: print(
                f"graphprune: warning: {cli_words(str(message))}", file=sys.stderr)
            return ns.run(ns)
    except GraphpruneError as exc:
        print(f"graphprune: error: {cli_words(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`| head`): it had what it read, and nothing else is wrong
        try:  # stdout to /dev/null, or the interpreter's last flush raises the same error again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as exc:  # the file system said no (a full disk, rights taken away mid-run)
        where = f" at '{exc.filename}'" if exc.filename else ""
        print(f"graphprune: error: {exc.strerror or exc}{where}; nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
