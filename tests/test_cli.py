"""The ``edgebed`` root command: every package's commands registered; slim installs degrade cleanly."""

from __future__ import annotations

import subprocess
import sys

from orchestrator.cli import build_parser


def test_all_commands_registered() -> None:
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert {"models", "serve", "link", "run", "up", "down", "status", "demo"} <= set(choices)


def test_tier_commands_work_without_orchestrator_dependencies() -> None:
    # The tier image installs no pandas/matplotlib: `edgebed serve` must still parse, and
    # --help must say which commands are missing and why.
    code = (
        "import sys\n"
        "for m in ('pandas', 'matplotlib'):\n"
        "    sys.modules[m] = None\n"
        "from orchestrator.cli import build_parser\n"
        "p = build_parser()\n"
        "p.parse_args(['serve', '--tier', 'mcu', '--port', '8000'])\n"
        "print(p.epilog)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "needs pandas" in proc.stdout
