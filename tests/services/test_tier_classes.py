"""Node classes (no server): the registry, class defaults, node name vs class, batching and
INT8-only rules, and the errors that name the key and the allowed values."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from services.tier import classes, simulator
from services.tier.config import (
    TierConfig,
    TierConfigError,
    build_tier_config,
    load_tier_config,
    node_config_data,
)

ALL = ["mcu", "edge", "cloud", "gpu", "npu"]
ALLOWED = "mcu, edge, cloud, gpu, npu"


def test_registry() -> None:
    assert classes.class_names() == ALL
    assert classes.batching_classes() == ["gpu"]
    assert [c for c in ALL if classes.node_class(c).int8_only] == ["npu"]
    assert classes.lm_classes() == ["mcu", "edge", "cloud", "gpu"]
    for bad in ("tpu", "EDGE", "", None, 3):
        with pytest.raises(classes.NodeClassError) as err:
            classes.node_class(bad)
        assert f"class: must be one of {ALLOWED}, got {bad!r}" == str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_class_defaults_are_the_class_files(name: str) -> None:
    raw = yaml.safe_load((classes.SERVICES_DIR / name / "tier.yaml").read_text())
    d = classes.class_defaults(name)
    assert d["class"] == name and "tier" not in d
    assert {k: v for k, v in raw.items() if k != "tier"} == d
    d["concurrency"] = 99  # a fresh copy each time
    assert classes.class_defaults(name).get("concurrency") != 99
    cfg = load_tier_config(name, use_env=False)
    assert (cfg.tier, cfg.node_class) == (name, name)


@pytest.mark.parametrize("name", ["mcu", "edge", "cloud"])
def test_simulator_classes_keep_their_profiles(name: str) -> None:
    cfg = load_tier_config(name, use_env=False)
    for model, m in cfg.models.items():
        assert m.latency_ms == simulator.MODEL_LATENCY_MS[name][model]
        assert m.batching is None
    assert cfg.energy_factor == simulator.ENERGY_FACTOR[name]


def test_gpu_defaults() -> None:
    cfg = load_tier_config("gpu", use_env=False)
    assert sorted(cfg.models) == ["fp32", "int8", "tinycnn"] and not cfg.lm
    assert (cfg.power.active_w, cfg.power.idle_w) == (70.0, 9.0)  # T4 TDP, idle in P8
    assert cfg.concurrency == 2 and cfg.batched_models == ["fp32", "int8", "tinycnn"]
    fp32, int8 = cfg.models["fp32"].batching, cfg.models["int8"].batching
    assert fp32 is not None and int8 is not None
    # the fits reproduce the T4 MobileNetV1 table (batch 1 / 2 / 4) within 0.02 ms
    for b, table in ((fp32, (0.8737, 1.4106, 2.5238)), (int8, (0.4925, 0.7485, 1.2914))):
        for k, ms in zip((1, 2, 4), table, strict=True):
            assert abs(b.batch_ms(k) - ms) < 0.02, (k, b.batch_ms(k), ms)
        assert (b.max_batch, b.max_queue_delay_ms) == (8, 2.0)
    # latency_ms of a batching model is its batch-of-one time
    assert cfg.models["fp32"].latency_ms == pytest.approx(0.87)


def test_npu_defaults() -> None:
    cfg = load_tier_config("npu", use_env=False)
    assert sorted(cfg.served_models) == ["int8", "tinycnn"]
    assert all(m.latency_ms == 1.41 and m.batching is None for m in cfg.models.values())
    assert (cfg.power.active_w, cfg.power.idle_w) == (2.0, 0.5)  # Coral: 4 TOPS at 2 W
    assert cfg.memory_bytes == 8 * 2**20 and cfg.concurrency == 1


def test_int8_models_come_from_the_manifest() -> None:
    from models.paths import models_dir

    assert classes.int8_model_names(models_dir()) == ["int8", "tinycnn"]
    assert classes.manifest_dtypes(Path("/nonexistent")) == {}


def test_a_node_named_otherwise_takes_its_class_defaults() -> None:
    cfg = load_tier_config("edge-2", node_class="edge", use_env=False)
    edge = load_tier_config("edge", use_env=False)
    assert (cfg.tier, cfg.node_class) == ("edge-2", "edge")
    assert cfg.served_models == edge.served_models
    assert {n: m.latency_ms for n, m in cfg.models.items()} == {
        k: v for k, v in simulator.MODEL_LATENCY_MS["edge"].items() if k in cfg.models
    }
    assert cfg.energy_factor == 1.4 and cfg.concurrency == 2
    assert cfg.lm["slm"].ttft_ms == edge.lm["slm"].ttft_ms


def test_lookups_key_on_the_class_not_the_name() -> None:
    """A node named 'mcu' of class edge has the edge profile: the name is only a name."""
    cfg = load_tier_config("mcu", node_class="edge", use_env=False)
    assert cfg.models["int8"].latency_ms == 10.0 and cfg.energy_factor == 1.4
    assert cfg.concurrency == 2  # edge's defaults file, not mcu's
    from services.tier.lm import plan

    assert plan(cfg.lm["slm"], None, "short").total_ms == pytest.approx(
        simulator.simulator_lm_total_ms("edge", "slm", "short")
    )


def test_class_from_every_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("tier: regional\nclass: cloud\nconcurrency: 3\n")
    cfg = load_tier_config(None, f, use_env=False)
    assert (cfg.tier, cfg.node_class, cfg.concurrency) == ("regional", "cloud", 3)
    assert cfg.models["fp32"].latency_ms == 12.0  # the cloud defaults under the file
    monkeypatch.setenv("EDGEBED_TIER_CLASS", "edge")
    monkeypatch.setenv("CLASS", "mcu")  # not ours: only the prefixed variable counts
    assert load_tier_config(None, f).node_class == "edge"  # environment beats the file
    assert load_tier_config(None, f, overrides={"class": "gpu"}).node_class == "gpu"
    assert load_tier_config(None, f, {"class": "gpu"}, node_class="npu").node_class == "npu"
    monkeypatch.setenv("EDGEBED_TIER_CLASS", "tpu")
    with pytest.raises(TierConfigError, match=f"class: must be one of {ALLOWED}, got 'tpu'"):
        load_tier_config(None, f)


def test_a_node_without_a_class_is_refused() -> None:
    with pytest.raises(TierConfigError) as err:
        load_tier_config("edge-2", use_env=False)
    assert str(err.value) == (
        "class: required for node 'edge-2', whose name is not a class (--class CLASS, or "
        f"'class:' in the config file); must be one of {ALLOWED}"
    )
    with pytest.raises(TierConfigError, match="class: required for node 'edge-2'"):
        build_tier_config({"tier": "edge-2", "memory_bytes": 1, "power": {"active_w": 1,
                                                                        "idle_w": 0},
                           "models": {"int8": {"latency_ms": 1}}})  # fmt: skip


def test_dump_round_trips_with_the_class_key() -> None:
    cfg = load_tier_config("gpu-1", node_class="gpu", use_env=False)
    dumped = cfg.model_dump(mode="json")
    assert dumped["class"] == "gpu" and "node_class" not in dumped
    again = TierConfig(**dumped)
    assert again == cfg
    assert TierConfig(**{**dumped, "node_class": "gpu"}).node_class == "gpu"  # by name too


def test_node_config_data_layers_a_section_over_its_class() -> None:
    data = node_config_data("edge-2", {"class": "edge", "concurrency": 3, "models": {"fp32": None}})
    cfg = build_tier_config(data)
    assert (cfg.tier, cfg.node_class, cfg.concurrency) == ("edge-2", "edge", 3)
    assert sorted(cfg.models) == ["int8", "tinycnn"]
    assert build_tier_config(node_config_data("gpu", {})).node_class == "gpu"
    # no class: validation names the key
    with pytest.raises(TierConfigError, match="class: required for node 'edge-9'"):
        build_tier_config(node_config_data("edge-9", {"memory_bytes": 1}))
    with pytest.raises(TierConfigError, match=f"class: must be one of {ALLOWED}, got 'tpu'"):
        build_tier_config(node_config_data("edge-9", {"class": "tpu", "memory_bytes": 1}))


@pytest.mark.parametrize(
    ("tier", "override", "needles"),
    [
        ("gpu", {"models": {"int8": {"batching": {"max_batch": 0}}}},
         ["models.int8.batching.max_batch: must be within 1..1024, got 0"]),
        ("gpu", {"models": {"int8": {"batching": {"max_batch": -3}}}},
         ["models.int8.batching.max_batch: must be within 1..1024, got -3"]),
        ("gpu", {"models": {"int8": {"batching": {"max_queue_delay_ms": -0.5}}}},
         ["models.int8.batching.max_queue_delay_ms: must be within 0..60000, got -0.5"]),
        ("gpu", {"models": {"int8": {"batching": {"base_ms": None}}}},
         ["models.int8.batching.base_ms: required key is missing"]),
        ("gpu", {"models": {"int8": {"batching": {"max_size": 4}}}},
         ["models.int8.batching.max_size: unknown key; allowed keys: max_batch, "
          "max_queue_delay_ms, base_ms, per_item_ms"]),
        ("gpu", {"models": {"int8": {"latency_ms": 3.0}}},
         ["models.int8.latency_ms: with batching the device time is batching.base_ms",
          "a batch of one: 0.49 ms"]),
        ("edge", {"models": {"int8": {"batching": {"base_ms": 1, "per_item_ms": 1}}}},
         ["models.int8.batching: dynamic batching needs a class that batches (gpu); node edge "
          "is class edge"]),
        ("npu", {"models": {"int8": {"batching": {"base_ms": 1, "per_item_ms": 1}}}},
         ["models.int8.batching: dynamic batching needs a class that batches (gpu)"]),
        ("npu", {"models": {"fp32": {"latency_ms": 5.0}}},
         ["models.fp32: class npu runs only full-integer INT8 models; fp32.tflite is float32",
          "Allowed models: int8, tinycnn"]),
        ("npu", {"models": {"int8": {"file": "fp32.tflite"}}},
         ["models.int8: class npu runs only full-integer INT8 models; fp32.tflite is float32"]),
        ("npu", {"lm": {"slm": {}}},
         ["lm: class npu serves no language model, got ['slm']", "(mcu, edge, cloud, gpu)"]),
        ("gpu", {"lm": {"llm": {}}},
         ["lm.llm.ttft_ms/tpot_ms: required for class gpu (no simulator default)"]),
        ("gpu", {"energy_factor": None}, ["energy_factor: required for class gpu"]),
        ("gpu", {"models": {"resnet": {}}}, ["models.resnet.latency_ms: required (no simulator "
                                             "default for class gpu, model resnet)"]),
        ("edge", {"bogus": 1}, ["bogus: unknown key; allowed keys: tier, class, device_time"]),
    ],
)  # fmt: skip
def test_bad_class_config_names_the_key(tier: str, override: dict, needles: list[str]) -> None:
    with pytest.raises(TierConfigError) as err:
        load_tier_config(tier, overrides=override, use_env=False)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_int8_only_class_checks_files_the_manifest_does_not_know(tmp_path: Path) -> None:
    """A float model under another name and file: refused when the tier loads it."""
    from models.paths import models_dir

    src = models_dir()
    if not (src / "fp32.tflite").is_file():
        pytest.skip("committed models missing")
    shutil.copy(src / "fp32.tflite", tmp_path / "mynet.tflite")
    shutil.copy(src / "int8.tflite", tmp_path / "int8.tflite")
    cfg = load_tier_config(
        "npu", overrides={"models": {"mynet": {"latency_ms": 2.0}, "tinycnn": None}}, use_env=False
    )  # the manifest does not know mynet.tflite: passes validation
    with pytest.raises(TierConfigError) as err:
        cfg.check_files(tmp_path)
    assert "models.mynet: class npu runs only full-integer INT8 models; mynet.tflite has " \
           "float32 input and float32 output" in str(err.value)  # fmt: skip
    ok = load_tier_config("npu", overrides={"models": {"tinycnn": None}}, use_env=False)
    ok.check_files(tmp_path)  # int8.tflite is INT8
