"""Process helpers for the stack tests: descendants of a PID, processes naming a state dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from procutil import descendants

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "experiments" / "seed.yaml"


def run_on_local_stack(exp: object, state_dir: Path, **kw: object) -> Any:
    """``edgebed up`` of ``exp`` (no Prometheus), one run into ``state_dir/run``, ``down``."""
    from orchestrator.stack import manager
    from orchestrator.stack.demo import run_on_stack

    state = manager.up(exp, state_dir, prometheus="off")
    try:
        result, _ = run_on_stack(exp, state, state_dir / "run", progress=False, plots=False,
                                 log=lambda _: None, **kw)
    finally:
        manager.down(state_dir)
    return result


def processes_mentioning(text: str) -> dict[int, str]:
    """Every live process but this one whose command line contains ``text`` (a state dir)."""
    return {p: c for p, c in descendants(1).items() if text in c and p != os.getpid()}


def models_available() -> bool:
    from models.paths import models_dir

    return all((models_dir() / f"{m}.tflite").exists() for m in ("tinycnn", "int8", "fp32"))


def require_models() -> None:
    if not models_available():
        pytest.skip("tier models (models/*.tflite) are not built yet")


def quick_experiment(tmp_path: Path, n: int = 24) -> Path:
    """The seed experiment with fast LM stubs (the simulator's SLM takes 12 s on the MCU)."""
    doc = yaml.safe_load(SEED.read_text())
    doc["name"] = "quick"
    doc["workload"]["n"] = n
    doc["workload"]["lm_ratio"] = 0.25
    doc["tiers"]["mcu"]["lm"] = {"slm": {"ttft_ms": 40, "tpot_ms": 0.5}}
    doc["tiers"]["edge"]["lm"] = {"slm": {"ttft_ms": 25, "tpot_ms": 0.3}}
    doc["tiers"]["cloud"]["lm"] = {"llm": {"ttft_ms": 15, "tpot_ms": 0.2}}
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
