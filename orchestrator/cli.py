"""The ``edgebed`` command line: one argparse tree, each package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
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
_OWN_PACKAGES = {"common", "models", "services", "netem", "orchestrator"}


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


def install_stop_handlers() -> None:
    """Ctrl-C and SIGTERM stop a command cleanly, whatever this process inherited.

    A process started in the background from a non-interactive shell inherits SIGINT *ignored*
    (POSIX job control), and then neither Python nor asyncio installs its own handler: Ctrl-C
    (or ``kill -INT``) would do nothing. SIGINT gets Python's default handler (a
    KeyboardInterrupt, or inside ``asyncio.run`` the cancellation of the run) explicitly, and
    SIGTERM is turned into a SIGINT, so both leave a complete, labelled run directory and stop
    whatever the command started. Servers (``edgebed serve``, link proxies) install their own.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    install_stop_handlers()
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
