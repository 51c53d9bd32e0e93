"""The fault matrix: a tier, the link proxy or the orchestrator gets SIGKILL, SIGTERM or SIGINT
in the middle of a serial and of a Poisson run on a real local stack.

Whatever happens, the run directory holds one row per request and policy (except after SIGKILL
of the orchestrator itself, which cannot write anything more: then the rows written so far,
none duplicated, and run.json still says the run was ``running``), every outcome is one of the
documented ones with an error text when it is not ``ok``, and ``edgebed down`` leaves nothing
running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from stack_testutil import REPO, processes_mentioning, quick_experiment, require_models

from orchestrator.client import OUTCOMES
from orchestrator.records import read_records
from orchestrator.stack.state import load_state

pytestmark = pytest.mark.slow
N = 40
POLICIES = ["always_edge", "confidence"]
FAULTS = [(who, sig) for who in ("tier", "links", "orchestrator")
          for sig in ("SIGKILL", "SIGTERM", "SIGINT")]


def _experiment(tmp: Path, arrival: str) -> Path:
    path = quick_experiment(tmp, n=N)
    doc = yaml.safe_load(path.read_text())
    doc["policies"] = POLICIES
    doc["arrival"] = ({"process": "serial"} if arrival == "serial"
                      else {"process": "poisson", "params": {"rate_rps": 15}})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("arrival", ["serial", "poisson"])
@pytest.mark.parametrize(("who", "sig"), FAULTS, ids=[f"{w}-{s}" for w, s in FAULTS])
def test_fault_matrix(tmp_path: Path, arrival: str, who: str, sig: str) -> None:
    require_models()
    exp = _experiment(tmp_path, arrival)
    state_dir = tmp_path / "state"
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    up = subprocess.run([*cli, "up", "--config", str(exp), "--state-dir", str(state_dir),
                         "--prometheus", "off"], capture_output=True, text=True, timeout=180,
                        cwd=REPO, env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    run = None
    try:
        run = subprocess.Popen([*cli, "run", "--config", str(exp), "--state-dir", str(state_dir),
                                "--out", str(out), "--no-progress", "--no-plots"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO, env=env)
        deadline = time.monotonic() + 120
        while _rows(out / "records.csv") < 10 and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[1][-3000:]
            time.sleep(0.05)
        state = load_state(state_dir)
        assert state is not None
        if who == "orchestrator":
            run.send_signal(getattr(signal, sig))
        else:
            name = "tier-edge" if who == "tier" else "links"
            rec = next(p for p in state.processes if p.name == name)
            os.killpg(rec.pid, getattr(signal, sig))
        _, err = run.communicate(timeout=240)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        down = subprocess.run([*cli, "down", "--state-dir", str(state_dir)], capture_output=True,
                              text=True, timeout=120, cwd=REPO, env=env)
    assert down.returncode == 0, down.stderr
    left = processes_mentioning(str(state_dir))
    assert not left, f"still running after edgebed down: {left}"

    assert "Traceback" not in err, err[-3000:]
    records = read_records(out)
    info = json.loads((out / "run.json").read_text())
    dup = records.duplicated(["policy", "id"])
    assert not dup.any(), records[dup][["policy", "id", "outcome"]]
    assert set(records["outcome"]) <= set(OUTCOMES), set(records["outcome"])
    failed = records[records["outcome"] != "ok"]
    assert (failed["error"] != "").all(), failed[failed["error"] == ""][["policy", "id"]]
    if who == "orchestrator" and sig == "SIGKILL":
        assert run.returncode == -signal.SIGKILL
        assert info["state"] == "running"  # labelled: this run never finished
        assert 10 <= len(records) <= N * len(POLICIES)
        return
    assert len(records) == N * len(POLICIES), len(records)
    for policy in POLICIES:
        ids = sorted(records.loc[records["policy"] == policy, "id"])
        assert ids == list(range(N)), f"{policy}: ids lost or duplicated"
    if who == "orchestrator":
        assert run.returncode == 130, err[-2000:]
        assert info["state"] == "interrupted"
        assert (records["outcome"] == "not_sent").any()
    else:
        assert run.returncode in (0, 1), err[-2000:]
        assert info["state"] == "finished"
        # the fault cost answers after it struck; the error says what happened
        assert (failed["outcome"].isin(["refused", "disconnected", "abandoned"])).any(), \
            records["outcome"].value_counts()
