"""The bad-input corpus: what a new user gets wrong, each answered with an error naming the key.

Experiment documents are validated in-process (``parse_experiment``): every case must raise
``ExperimentError`` whose text names the key path given. Command lines run as real processes:
every case must exit 2 (or 1 where the stack itself is unusable) within a timeout, print a
message naming the option or key, and no traceback. The HTTP APIs' corpora live beside their
servers (tests/services/test_tier_bad_input.py, tests/netem/test_control_bad_input.py).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.experiment import ExperimentError, load_experiment, parse_experiment

REPO = Path(__file__).resolve().parents[1]
SEED = yaml.safe_load((REPO / "experiments" / "seed.yaml").read_text())
INF = float("inf")
NAN = float("nan")


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return out


_DELETE = object()

# (case id, key path to set, value, text the error must contain)
DOC_CASES: list[tuple[str, str, Any, str]] = [
    ("name-empty", "name", "", "name:"),
    ("name-slash", "name", "a/b", "name:"),
    ("name-number", "name", 5, "name:"),
    ("unknown-top-key", "colour", "blue", "colour: unknown key; allowed keys: name"),
    ("seeds-negative", "seeds", -1, "seeds"),
    ("seeds-bool", "seeds", True, "seeds"),
    ("seeds-unknown-dim", "seeds.weather", 3, "seeds.weather: unknown key"),
    ("seeds-float", "seeds.workload", 1.5, "seeds.workload"),
    ("tiers-not-mapping", "tiers", ["mcu"], "tiers"),
    ("tiers-bad-name", "tiers.Edge 1", {}, "tiers: node names must be lower case"),
    ("tiers-no-class", "tiers.edge-9", {}, "tiers.edge-9: class: required"),
    ("tiers-unknown-class", "tiers.edge-9", {"class": "tpu"},
     "tiers.edge-9: class: must be one of mcu, edge, cloud, gpu, npu"),
    ("tiers-empty", "tiers", {}, "tiers: at least one tier is required"),
    ("tier-concurrency-0", "tiers.mcu.concurrency", 0, "tiers.mcu.concurrency: must be within 1..256"),
    ("tier-concurrency-str", "tiers.mcu.concurrency", "two", "tiers.mcu.concurrency"),
    ("tier-queue-negative", "tiers.edge.queue_limit", -1, "tiers.edge.queue_limit"),
    ("tier-unknown-key", "tiers.edge.concurency", 2, "tiers.edge.concurency: unknown key"),
    ("tier-device-time", "tiers.edge.device_time", "fast", "tiers.edge.device_time"),
    ("tier-latency-negative", "tiers.edge.models", {"fp32": {"latency_ms": -1}},
     "tiers.edge.models.fp32.latency_ms"),
    ("tier-latency-inf", "tiers.edge.models", {"fp32": {"latency_ms": INF}},
     "tiers.edge.models.fp32.latency_ms"),
    ("tier-memory-fp32-on-mcu", "tiers.mcu.models", {"fp32": {"latency_ms": 80}},
     "tiers.mcu.memory_bytes"),
    ("tier-lm-under-models", "tiers.edge.models", {"slm": {}}, "tiers.edge"),
    ("links-not-mapping", "links", [1, 2], "links"),
    ("link-delay-negative", "links.device-edge", {"src": "device", "dst": "edge", "delay_ms": -5},
     "links.device-edge.delay_ms"),
    ("link-delay-inf", "links.device-edge", {"src": "device", "dst": "edge", "delay_ms": INF},
     "links.device-edge"),
    ("link-delay-nan", "links.device-edge", {"src": "device", "dst": "edge", "delay_ms": NAN},
     "links.device-edge"),
    ("link-rtt-inf", "links.device-cloud.rtt_range_ms", [0, INF], "rtt_range_ms"),
    ("link-rtt-reversed", "links.device-cloud.rtt_range_ms", [120, 30], "rtt_range_ms[1]"),
    ("link-rtt-one", "links.device-cloud.rtt_range_ms", [30], "rtt_range_ms"),
    ("link-rtt-bool", "links.device-cloud.rtt_range_ms", [True, 5], "rtt_range_ms[0]"),
    ("link-rtt-float", "links.device-cloud.rtt_range_ms", [30.5, 120], "rtt_range_ms[0]"),
    ("link-loss-140", "links.device-edge", {"src": "device", "dst": "edge", "loss_pct": 140},
     "links.device-edge.loss_pct"),
    ("link-jitter-gt-delay", "links.device-edge",
     {"src": "device", "dst": "edge", "delay_ms": 2, "jitter_ms": 5}, "jitter_ms"),
    ("link-distribution", "links.device-edge",
     {"src": "device", "dst": "edge", "delay_ms": 2, "distribution": "gamma"}, "distribution"),
    ("link-rate-0", "links.device-edge", {"src": "device", "dst": "edge", "rate_mbit": 0},
     "rate_mbit"),
    ("link-unknown-dst", "links.device-edge.dst", "gpu", "links.device-edge.dst: 'gpu'"),
    # a 5 ms edge->cloud hop makes device->edge->cloud the cloud's shortest path
    ("link-never-crossed", "links.edge-cloud", {"src": "edge", "dst": "cloud", "delay_ms": 5},
     "links.device-cloud: no path from 'device' crosses it"),
    ("path-unknown-node", "paths.gpu-9", ["device-edge"], "paths.gpu-9: unknown node 'gpu-9'"),
    ("path-unknown-link", "paths.cloud", ["device-edge", "edge-cloud"],
     "paths.cloud[1]: unknown link 'edge-cloud'; links: device-cloud, device-edge, device-mcu"),
    ("path-not-chained", "paths.cloud", ["device-edge", "device-cloud"],
     "paths.cloud[1]: link device-cloud starts at 'device', but the path is at 'edge'"),
    ("path-wrong-end", "paths.cloud", ["device-edge"], "paths.cloud: ends at 'edge', not at 'cloud'"),
    ("path-empty", "paths.cloud", [], "paths.cloud: a path needs at least one link"),
    ("link-self", "links.device-edge.src", "edge", "links.device-edge: src and dst must differ"),
    ("link-duplicate", "links.device-edge-2", {"src": "device", "dst": "edge"},
     "links.device-edge-2: duplicates links.device-edge"),
    ("link-unknown-key", "links.device-edge.latency", 5, "links.device-edge.latency"),
    ("link-backend", "link_backend", "tcp", "link_backend: must be one of"),
    ("workload-n-0", "workload.n", 0, "workload.n: must be within 1..1000000"),
    ("workload-n-huge", "workload.n", 10**9, "workload.n"),
    ("workload-easy-ratio", "workload.easy_ratio", 1.5, "workload.easy_ratio"),
    ("workload-easy-ratio-nan", "workload.easy_ratio", NAN, "workload.easy_ratio"),
    ("workload-deadline-order", "workload.deadline_lo_ms", 500, "deadline_hi_ms must be >="),
    ("workload-lm-extra-order", "workload.lm_deadline_extra_hi_ms", 100,
     "lm_deadline_extra_hi_ms must be >= lm_deadline_extra_lo_ms"),
    ("workload-tokens-order", "workload.long_max_tokens", 8, "long_max_tokens must be >="),
    ("workload-unknown", "workload.size", 10, "workload.size: unknown key"),
    ("arrival-unknown", "arrival.process", "burst", "arrival.process: must be one of"),
    ("arrival-shorthand-unknown", "arrival", "burst", "arrival.process: must be one of"),
    ("arrival-bad-param", "arrival", {"process": "bursty", "params": {"rate_rps": 3}},
     "arrival.params: rate_rps: not a parameter of arrival process 'bursty'; allowed: on_rate_rps"),
    ("arrival-off-inf", "arrival", {"process": "bursty", "params": {"off_s": INF}},
     "arrival.params: off_s must be a finite number"),
    ("arrival-off-nan", "arrival", {"process": "bursty", "params": {"off_s": NAN}},
     "arrival.params: off_s must be a finite number"),
    ("arrival-rate-0", "arrival", {"process": "poisson", "params": {"rate_rps": 0}},
     "arrival.params: rate_rps must be within"),
    ("arrival-rate-str", "arrival", {"process": "poisson", "params": {"rate_rps": "fast"}},
     "arrival.params: rate_rps must be a number"),
    ("arrival-trace-missing", "arrival", {"process": "trace", "params": {"path": "nope.csv"}},
     "arrival.params: path: trace file not found"),
    ("arrival-trace-no-path", "arrival", {"process": "trace"},
     "arrival.params: path: required by arrival process 'trace'"),
    ("policies-empty", "policies", [], "policies"),
    ("policy-unknown", "policies", ["always_clod"], "policies[0].name: unknown policy"),
    ("policy-threshold", "policies", [{"name": "confidence", "params": {"threshold": 1.5}}],
     "policies[0].params (confidence): threshold must be within 0..1"),
    ("policy-margin", "policies", [{"name": "hybrid", "params": {"margin": 0}}],
     "policies[0].params (hybrid): margin"),
    ("policy-unknown-param", "policies", [{"name": "confidence", "params": {"thr": 0.5}}],
     "policies[0].params (confidence)"),
    ("policy-bad-route", "policies", [{"name": "always_local", "params": {"cv_route": "GPU/x"}}],
     "policies[0].params (always_local)"),
    ("policy-twice", "policies", ["always_cloud", "always_cloud"],
     "the same policy with the same params is listed twice"),
    ("energy-unknown", "energy.model", "battery", "energy.model: must be one of"),
    ("energy-param-negative", "energy", {"model": "device", "params": {"tx_power_mw": -1}},
     "energy.params: tx_power_mw"),
    ("energy-param-unknown", "energy", {"model": "device", "params": {"volts": 3}},
     "energy.params: volts: unknown key"),
    ("predictor-alpha", "predictor.ewma_alpha", 2, "predictor.ewma_alpha: must be within 0..1"),
    ("replay-concurrency-0", "replay.concurrency", 0, "replay.concurrency: must be within 1..10000"),
    ("replay-budget-inf", "replay.request_budget_s", INF, "replay.request_budget_s"),
    ("replay-budget-0", "replay.request_budget_s", 0, "replay.request_budget_s"),
    ("replay-host-lead", "replay.host_lead", "sometimes", "replay.host_lead"),
    ("replay-host-lead-big", "replay.host_lead", 50, "replay.host_lead"),
    ("plugins-missing", "plugins", ["no_such_module_xyz"],
     "plugins[0]: cannot import 'no_such_module_xyz'"),
    ("plugins-not-list", "plugins", "example", "plugins: must be a list"),
    ("scenario-unknown-action", "scenario", [{"at_s": 1, "action": "explode"}],
     "scenario[0].action: must be one of"),
    ("scenario-negative-time", "scenario", [{"at_s": -1, "action": "kill", "node": "edge"}],
     "scenario[0].at_s"),
    ("scenario-inf-time", "scenario", [{"at_s": INF, "action": "kill", "node": "edge"}],
     "scenario[0].at_s"),
    ("scenario-unknown-node", "scenario", [{"at_s": 1, "action": "kill", "node": "gpu"}],
     "scenario[0].node: unknown node 'gpu'"),
    ("scenario-unknown-link", "scenario",
     [{"at_s": 1, "action": "link", "link": "x", "set": {"delay_ms": 5}}],
     "scenario[0].link: unknown link 'x'"),
    ("scenario-bad-link-set", "scenario",
     [{"at_s": 1, "action": "link", "link": "device-edge", "set": {"loss_pct": 400}}],
     "scenario[0].set"),
    ("scenario-missing-node", "scenario", [{"at_s": 1, "action": "kill"}],
     "action kill needs key 'node'"),
    ("scenario-rate-serial", "scenario", [{"at_s": 1, "action": "arrival_rate",
                                           "rate_factor": 2}], "scenario[0]: arrival_rate needs"),
    ("scenario-rate-0", "scenario", [{"at_s": 1, "action": "arrival_rate", "rate_factor": 0}],
     "scenario[0].rate_factor"),
]


@pytest.mark.parametrize(("path", "value", "expect"), [c[1:] for c in DOC_CASES],
                         ids=[c[0] for c in DOC_CASES])
def test_experiment_document(path: str, value: Any, expect: str) -> None:
    doc = _set(SEED, path, value)
    with pytest.raises(ExperimentError) as info:
        parse_experiment(doc, "case.yaml", base_dir=REPO / "experiments")
    text = str(info.value)
    assert expect in text, f"expected {expect!r} in:\n{text}"
    assert "Traceback" not in text


def test_experiment_files_that_are_not_yaml_documents(tmp_path: Path) -> None:
    cases = {
        "a directory": (tmp_path, "not a file"),
        "not UTF-8": (tmp_path / "latin1.yaml", "not UTF-8 text"),
        "bad YAML": (tmp_path / "bad.yaml", "not valid YAML"),
        "a list": (tmp_path / "list.yaml", "(top level): must be a mapping"),
        "missing": (tmp_path / "nope.yaml", "file not found"),
        "inf in a range": (tmp_path / "inf.yaml", "rtt_range_ms"),
    }
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "bad.yaml").write_text("tiers: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    inf = copy.deepcopy(SEED)
    (tmp_path / "inf.yaml").write_text(
        yaml.safe_dump(inf).replace("- 30\n    - 120", "- 0\n    - .inf"))
    for what, (path, expect) in cases.items():
        with pytest.raises(ExperimentError) as info:
            load_experiment(path)
        assert expect in str(info.value), (what, str(info.value))


# (case id, argv after `edgebed`, expected exit code, text stderr must contain)
CLI_CASES: list[tuple[str, list[str], int, str]] = [
    ("run-concurrency-negative", ["run", "--config", "{seed}", "--concurrency", "-1"], 2,
     "replay.concurrency: must be within 1..10000, got -1"),
    ("run-concurrency-zero", ["run", "--config", "{seed}", "--concurrency", "0"], 2,
     "replay.concurrency: must be within 1..10000, got 0"),
    ("run-n-zero", ["run", "--config", "{seed}", "--n", "0"], 2, "workload.n"),
    ("run-metrics-port", ["run", "--config", "{seed}", "--targets", "mcu=http://127.0.0.1:1",
                          "--metrics-port", "70000"], 2, "--metrics-port must be within 0..65535"),
    ("run-out-proc", ["run", "--config", "{seed}", "--out", "/proc/x"], 2, "--out /proc/x"),
    ("run-out-file", ["run", "--config", "{seed}", "--out", "{file}"], 2, "--out"),
    ("run-config-dir", ["run", "--config", "{tmp}"], 2, "not a file"),
    ("run-config-missing", ["run", "--config", "{tmp}/nope.yaml"], 2, "file not found"),
    ("run-targets-tier", ["run", "--config", "{seed}", "--targets", "gpu=http://x"], 2,
     "--targets: expected NODE=URL"),
    ("run-targets-url", ["run", "--config", "{seed}", "--targets", "mcu=ftp://x"], 2,
     "--targets: mcu must be an http(s) URL"),
    ("run-policy", ["run", "--config", "{seed}", "--policy", "always_clod"], 2,
     "--policy must be one of"),
    ("run-plugin", ["run", "--config", "{seed}", "--plugin", "no_such_plugin_xyz"], 2,
     "--plugin[0]: cannot import 'no_such_plugin_xyz'"),
    ("run-scenario-without-stack", ["run", "--config", "{repo}/experiments/failover.yaml",
                                    "--targets", "mcu=http://127.0.0.1:1"], 2,
     "scenario: node and link actions need a stack"),
    ("run-trace-dir", ["run", "--config", "{trace_dir_exp}"], 2, "path: not a file"),
    ("demo-n-zero", ["demo", "--n", "0", "--state-dir", "{tmp}/st"], 2, "workload.n"),
    ("demo-fidelity-probes", ["demo", "--fidelity-probes", "-3"], 2, "--fidelity-probes"),
    ("demo-scrape", ["demo", "--scrape-interval-s", "0"], 2, "--scrape-interval-s"),
    ("demo-config-dir", ["demo", "--config", "{tmp}", "--state-dir", "{tmp}/st"], 2, "not a file"),
    ("up-plugin", ["up", "--plugin", "no_such_plugin_xyz", "--state-dir", "{tmp}/st"], 2,
     "--plugin[0]"),
    ("down-corrupt-state", ["down", "--state-dir", "{corrupt}"], 1, "corrupt"),
    ("status-corrupt-state", ["status", "--state-dir", "{corrupt}"], 1, "corrupt"),
    ("run-corrupt-state", ["run", "--config", "{seed}", "--state-dir", "{corrupt}"], 1,
     "corrupt"),
    ("up-corrupt-state", ["up", "--state-dir", "{corrupt}", "--prometheus", "off"], 1,
     "corrupt"),
    ("serve-unknown-tier", ["serve", "--tier", "tpu", "--port", "18000"], 2, "class"),
    ("serve-port", ["serve", "--tier", "mcu", "--port", "70000"], 2, "port"),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("badcli")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "stack.json").write_text("{not json")
    afile = tmp / "a-file"
    afile.write_text("x")
    trace_exp = copy.deepcopy(SEED)
    trace_exp["arrival"] = {"process": "trace", "params": {"path": str(tmp)}}
    (tmp / "trace.yaml").write_text(yaml.safe_dump(trace_exp))
    return {"seed": str(REPO / "experiments" / "seed.yaml"), "tmp": str(tmp),
            "corrupt": str(corrupt), "file": str(afile), "repo": str(REPO),
            "trace_dir_exp": str(tmp / "trace.yaml")}


@pytest.mark.parametrize(("argv", "code", "expect"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_command_line(cli_files: dict[str, str], argv: list[str], code: int, expect: str) -> None:
    args = [a.format(**cli_files) for a in argv]
    env = {**os.environ, "EDGEBED_STATE_DIR": str(Path(cli_files["tmp"]) / "no-stack")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert expect in proc.stderr, f"expected {expect!r} in:\n{proc.stderr[-2000:]}"
