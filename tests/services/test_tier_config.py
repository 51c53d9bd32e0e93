"""Tier configs: simulator defaults, layering, key-level errors, memory budget (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.tier import simulator
from services.tier.config import TierConfigError, load_tier_config
from services.tier.energy import estimate


@pytest.mark.parametrize("tier", ["mcu", "edge", "cloud"])
def test_builtin_latencies_are_the_simulator_table(tier: str) -> None:
    cfg = load_tier_config(tier, use_env=False)
    for name, m in cfg.models.items():
        assert m.latency_ms == simulator.MODEL_LATENCY_MS[tier][name], (tier, name)
    assert cfg.energy_factor == simulator.ENERGY_FACTOR[tier]


def test_served_models_per_tier() -> None:
    assert sorted(load_tier_config("mcu", use_env=False).served_models) == [
        "int8",
        "slm",
        "tinycnn",
    ]
    assert sorted(load_tier_config("edge", use_env=False).served_models) == [
        "fp32", "int8", "slm", "tinycnn"
    ]  # fmt: skip
    assert sorted(load_tier_config("cloud", use_env=False).served_models) == [
        "fp32", "int8", "llm", "tinycnn"
    ]  # fmt: skip
    assert load_tier_config("mcu", use_env=False).concurrency == 1


@pytest.mark.parametrize(("tier", "model"), [("mcu", "slm"), ("edge", "slm"), ("cloud", "llm")])
@pytest.mark.parametrize("length", ["short", "long"])
def test_lm_profile_reproduces_simulator_totals(tier: str, model: str, length: str) -> None:
    from services.tier.lm import plan

    cfg = load_tier_config(tier, use_env=False)
    p = plan(cfg.lm[model], None, length)
    want = simulator.simulator_lm_total_ms(tier, model, length)
    assert p.total_ms == pytest.approx(want, abs=1e-9), f"configured {want} ms, plan {p.total_ms}"
    assert p.quality == simulator.LM_QUALITY[model][length]


def test_env_and_overrides_layering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEBED_TIER_MODELS__INT8__LATENCY_MS", "31")
    monkeypatch.setenv("EDGEBED_TIER_QUEUE_LIMIT", "5")
    cfg = load_tier_config("mcu", overrides={"queue_limit": 7})
    assert cfg.models["int8"].latency_ms == 31.0
    assert cfg.queue_limit == 7  # explicit overrides beat the environment
    cfg = load_tier_config("mcu", overrides={"models": {"int8": None}}, use_env=False)
    assert "int8" not in cfg.models


def test_user_file_layers_over_builtin(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("tier: edge\nconcurrency: 3\nmodels:\n  int8: {latency_ms: 2.5}\n")
    cfg = load_tier_config(None, f, use_env=False)
    assert (cfg.tier, cfg.concurrency, cfg.models["int8"].latency_ms) == ("edge", 3, 2.5)
    assert cfg.models["fp32"].latency_ms == 22.0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"concurrency": 0}, "concurrency: must be within 1..256, got 0"),
        ({"device_time": "fast"}, "device_time"),
        ({"models": {"int8": {"latency_ms": -1}}}, "models.int8.latency_ms"),
        ({"models": {"int8": {"jitter": {"dist": "uniform", "low_ms": 3, "high_ms": 1}}}},
         "high_ms must be >= low_ms"),
        ({"models": {"int8": {"jitter": {"dist": "gamma"}}}}, "models.int8.jitter"),
        ({"models": {"resnet": {}}}, "models.resnet.latency_ms: required"),
        ({"lm": {"gpt": {}}}, "lm: model must be one of"),
        ({"bogus_key": 1}, "bogus_key"),
        ({"poll_us": 20_000}, "poll_us: must be within 0..10000, got 20000"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(override: dict, needle: str) -> None:
    with pytest.raises(TierConfigError) as err:
        load_tier_config("mcu", overrides=override, use_env=False)
    assert needle in str(err.value)


def _fake_models(tmp_path: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        (tmp_path / f"{name}.tflite").write_bytes(b"\0" * size)
    return tmp_path


def test_memory_budget_refuses_fp32_on_mcu(tmp_path: Path) -> None:
    d = _fake_models(tmp_path, {"tinycnn": 4000, "int8": 12000, "fp32": 40000})
    cfg = load_tier_config("mcu", overrides={"memory_bytes": 32768}, use_env=False)
    assert cfg.check_memory(d) == {"tinycnn": 4000, "int8": 12000}
    with_fp32 = load_tier_config(
        "mcu", overrides={"memory_bytes": 32768, "models": {"fp32": {}}}, use_env=False
    )
    with pytest.raises(TierConfigError) as err:
        with_fp32.check_memory(d)
    msg = str(err.value)
    assert "memory_bytes" in msg and "fp32 alone does not fit" in msg and "32,768" in msg


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    cfg = load_tier_config("edge", use_env=False)
    with pytest.raises(TierConfigError, match=r"models\.int8\.file: int8\.tflite not found"):
        cfg.check_memory(tmp_path)


def test_energy_models() -> None:
    cfg = load_tier_config("edge", use_env=False)
    e = estimate(cfg, busy_ms=10.0, wait_ms=2.0)
    assert e["power_mj"] == pytest.approx(5.0 * 10.0 + 1.5 * 2.0)
    assert e["simulator_mj"] == pytest.approx(1.4 * 12.0 * 0.02)
    assert e["energy_mj"] == e["power_mj"] and e["model"] == "power"
    sim = load_tier_config("edge", overrides={"energy_model": "simulator"}, use_env=False)
    assert estimate(sim, 10.0, 2.0)["energy_mj"] == pytest.approx(1.4 * 12.0 * 0.02)
