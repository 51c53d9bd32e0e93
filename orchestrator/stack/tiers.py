"""How the local stack launches one tier: its config file and the ``edgebed serve`` command line."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.experiment import Experiment

LOOPBACK = "127.0.0.1"


def write_tier_config(exp: Experiment, name: str, config_dir: Path) -> Path:
    """Write the experiment's ``tiers.<name>`` section (layered by the tier over its class
    defaults)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.yaml"
    section = exp.tier_section(name)
    section["tier"] = name
    path.write_text(
        f"# tiers.{name} of experiment {exp.name!r}, layered over "
        f"services/{exp.tiers[name].node_class}/tier.yaml\n"
        + yaml.safe_dump(section, sort_keys=False)
    )
    return path


def tier_argv(python: str, name: str, config_path: Path, port: int) -> list[str]:
    """``edgebed serve`` for one tier on loopback (pure: no side effects). It runs the tier's
    own entry point (``python -m services.tier``, the same options), which imports only the
    tier: through ``orchestrator.cli`` every node also carried every command's modules (pandas,
    aiohttp, ...), ~37 MiB more per node (``bench/bench_scale.py``)."""
    return [
        python,
        "-m",
        "services.tier",
        "--tier",
        name,
        "--config",
        str(config_path),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
