"""The ``edgebed`` command line: one argparse tree, each package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module exposes ``register(subparsers)`` adding its commands; a command's parser sets
# ``func`` (called with the parsed namespace, returning an exit code).
_COMMAND_MODULES = (
    "models.cli",
    "services.tier.cli",
    "netem.cli",
    "orchestrator.commands",
    "orchestrator.stack.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebed",
        description="Emulation testbed for edge-AI offloading (MCU / edge / cloud tiers).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not built yet must not break the rest
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
