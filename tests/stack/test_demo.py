"""``edgebed demo`` end to end as a user runs it: summary, run directory, and always a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stack_testutil import processes_mentioning, quick_experiment

from orchestrator.records import read_records
from orchestrator.stack.state import load_state

REPO = Path(__file__).resolve().parents[2]
EDGEBED = [sys.executable, "-m", "orchestrator.cli"]
POLICIES = ("always_local", "always_edge", "always_cloud", "confidence", "latency_aware", "hybrid")

pytestmark = pytest.mark.slow


def test_demo_prints_the_summary_and_stops_everything(tmp_path: Path) -> None:
    config = quick_experiment(tmp_path, n=12)
    state_dir, run_dir = tmp_path / "state", tmp_path / "run"
    t0 = time.monotonic()
    out = subprocess.run(
        [*EDGEBED, "demo", "--config", str(config), "--state-dir", str(state_dir),
         "--out", str(run_dir), "--fidelity-probes", "20"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    took = time.monotonic() - t0
    print(out.stdout[-3000:])
    print(f"demo took {took:.1f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["policy", "n"])
    table = [line.split()[0] for line in lines[header + 1 : header + 1 + len(POLICIES)]]
    assert table == list(POLICIES), out.stdout
    assert f"run directory: {run_dir}" in out.stdout
    assert "link fidelity" in out.stdout
    records = read_records(run_dir / "records.csv")
    assert len(records) == 12 * len(POLICIES)
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")), "no plots written"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["link_backend"]["backend"] == "proxy"
    assert {r["link"] for r in info["link_fidelity"]} == {"device-mcu", "device-edge", "device-cloud"}
    # "progress bar": tqdm writes per-policy bars to stderr
    for policy in POLICIES:
        assert f"{policy}:" in out.stderr
    assert load_state(state_dir) is None
    left = processes_mentioning(str(state_dir))
    assert not left, f"demo left processes running: {left}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_demo_still_stops_the_stack(tmp_path: Path, sig: signal.Signals) -> None:
    config = quick_experiment(tmp_path, n=400)  # long enough to be interrupted mid-run
    state_dir, run_dir = tmp_path / "state", tmp_path / "run"
    proc = subprocess.Popen(
        [*EDGEBED, "demo", "--config", str(config), "--state-dir", str(state_dir),
         "--out", str(run_dir), "--fidelity-probes", "0", "--prometheus", "off", "--no-plots"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        records = run_dir / "records.csv"
        while time.monotonic() < deadline:  # wait until the replay is under way
            if records.exists() and len(records.read_text().splitlines()) > 5:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the demo did not start replaying within 180 s")
        running = processes_mentioning(str(state_dir))
        assert len(running) >= 4, running  # 3 tiers + link proxy
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, stdout[-2000:], stderr[-2000:])
    assert load_state(state_dir) is None
    left = processes_mentioning(str(state_dir))
    assert not left, f"interrupted demo left processes running: {left}"
    assert len(read_records(records)) > 5, "records written before the interrupt were kept"
