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
_OWN_PACKAGES = {"models", "services", "netem", "orchestrator"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebed",
        description="Emulation testbed for edge-AI offloading (MCU / edge / cloud tiers).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    unavailable = []
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A slim install (the tier image holds no pandas/matplotlib) still gets the commands
            # it can run; the others are named in --help with what they lack.
            missing = (exc.name or "").split(".")[0]
            if missing in _OWN_PACKAGES or not missing:
                raise
            unavailable.append(f"{name.split('.')[0]} commands (needs {missing})")
            continue
        module.register(sub)
    if unavailable:
        parser.epilog = "Not available in this installation: " + "; ".join(unavailable) + "."
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
