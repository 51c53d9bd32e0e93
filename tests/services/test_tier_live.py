"""Live tiers over real HTTP on loopback: offline-equal predictions, bad input, LM, models."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

from models.paths import models_dir
from models.runtime import LiteRTModel
from services.tier.process import TierProcess

TIER_MODELS = {
    "mcu": ("tinycnn", "int8"),
    "edge": ("int8", "fp32", "tinycnn"),
    "cloud": ("fp32", "int8", "tinycnn"),
}
BINARY = {"content-type": "application/octet-stream"}


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["mcu", "edge", "cloud"])
def test_predictions_equal_offline_litert(
    tier: str, real_tiers: dict[str, TierProcess], eval_set: dict[str, np.ndarray]
) -> None:
    """Every image of the committed evaluation set, binary body, request for request."""
    images = np.concatenate([eval_set["easy_images"], eval_set["hard_images"]])
    with httpx.Client(base_url=real_tiers[tier].url, timeout=10.0) as client:
        for model in TIER_MODELS[tier]:
            offline = LiteRTModel(models_dir() / f"{model}.tflite")
            mismatches = []
            for i, img in enumerate(images):
                want = offline.predict(img)
                r = client.post(f"/v1/infer?model={model}", content=img.tobytes(), headers=BINARY)
                assert r.status_code == 200, r.text
                got = r.json()
                if got["prediction"] != want.prediction or not np.isclose(
                    got["confidence"], want.confidence, rtol=0, atol=1e-9
                ):
                    mismatches.append((i, got["prediction"], want.prediction))
            assert not mismatches, (
                f"{tier}/{model}: {len(mismatches)} differ, first {mismatches[:5]}"
            )


@pytest.mark.parametrize("tier", ["mcu", "cloud"])
def test_json_bodies_match_binary(
    tier: str, real_tiers: dict[str, TierProcess], eval_set: dict[str, np.ndarray]
) -> None:
    """JSON (uint8 ints, 2-D; and 0–1 floats, flat) gives the binary answer for the same image."""
    images = eval_set["hard_images"][:150]
    with httpx.Client(base_url=real_tiers[tier].url, timeout=10.0) as client:
        for model in TIER_MODELS[tier]:
            for img in images:
                b = client.post(f"/v1/infer?model={model}", content=img.tobytes(), headers=BINARY)
                j = client.post("/v1/infer", json={"model": model, "image": img.tolist()})
                f = client.post(
                    "/v1/infer",
                    json={"model": model, "image": (img.reshape(-1) / 255.0).tolist()},
                )
                assert b.status_code == j.status_code == f.status_code == 200
                bj, jj, fj = b.json(), j.json(), f.json()
                assert jj["probabilities"] == bj["probabilities"]
                assert fj["prediction"] == bj["prediction"]
                assert fj["confidence"] == pytest.approx(bj["confidence"], abs=0.02)


def test_answer_shape_and_labels(real_tiers: dict[str, TierProcess]) -> None:
    r = httpx.post(
        f"{real_tiers['edge'].url}/v1/infer?model=int8",
        content=bytes(784),
        headers={**BINARY, "x-request-id": "req-42"},
    )
    d = r.json()
    assert r.status_code == 200
    assert d["tier"] == "edge" and d["model"] == "int8" and d["request_id"] == "req-42"
    assert len(d["probabilities"]) == 10 and abs(sum(d["probabilities"]) - 1.0) < 1e-6
    assert d["confidence"] == max(d["probabilities"])
    assert d["emulated"] == {"device_time": False, "energy": True, "lm": False}  # real mode
    t = d["timing"]
    assert t["emulated_ms"] == t["compute_ms"] and t["service_ms"] >= t["compute_ms"]
    assert t["send_lead_ms"] == t["host_lead_ms"] == 0.0  # nothing held in real mode
    assert d["load"] == {"queue_depth": 0, "in_service": 0, "concurrency": 2, "queue_limit": 32}
    assert d["energy"]["model"] == "power" and d["energy"]["energy_mj"] == d["energy"]["power_mj"]


def _image(value: float = 0.0) -> list[float]:
    return [value] * 784


BAD_INFER = [
    # (description, kwargs for httpx.post, expected status, expected field)
    ("short image", {"json": {"model": "int8", "image": _image()[:783]}}, 422, "image"),
    ("ragged rows", {"json": {"model": "int8", "image": [[0] * 28] * 27 + [[0] * 5]}},
     422, "image"),
    ("negative pixel", {"json": {"model": "int8", "image": [-1, *_image()[1:]]}}, 422, "image[0]"),
    ("pixel > 255", {"json": {"model": "int8", "image": [*_image()[:9], 300, *_image()[10:]]}},
     422, "image[9]"),
    ("NaN", {"content": b'{"model":"int8","image":[NaN' + b",0" * 783 + b"]}",
             "headers": {"content-type": "application/json"}}, 422, "image[0]"),
    ("Infinity", {"content": b'{"model":"int8","image":[0,Infinity' + b",0" * 782 + b"]}",
                  "headers": {"content-type": "application/json"}}, 422, "image[1]"),
    ("huge float", {"content": b'{"model":"int8","image":[1e400' + b",0" * 783 + b"]}",
                    "headers": {"content-type": "application/json"}}, 422, "image[0]"),
    ("strings", {"json": {"model": "int8", "image": ["x"] * 784}}, 422, "image"),
    ("booleans", {"json": {"model": "int8", "image": [True] * 784}}, 422, "image"),
    ("image missing", {"json": {"model": "int8"}}, 422, "image"),
    ("model missing", {"json": {"image": _image()}}, 422, "model"),
    ("model not a string", {"json": {"model": 8, "image": _image()}}, 422, "model"),
    ("unknown field", {"json": {"model": "int8", "image": _image(), "colour": 1}}, 422, "colour"),
    ("bad scale", {"json": {"model": "int8", "image": _image(), "scale": "x"}}, 422, "scale"),
    ("unknown model", {"json": {"model": "resnet", "image": _image()}}, 404, "model"),
    ("LM model on infer", {"json": {"model": "slm", "image": _image()}}, 404, "model"),
    ("malformed JSON", {"content": b'{"model": "int8", "image": [',
                        "headers": {"content-type": "application/json"}}, 400, "body"),
    ("JSON array", {"json": [1, 2, 3]}, 422, "body"),
    ("binary 783 bytes", {"content": bytes(783), "params": {"model": "int8"}, "headers": BINARY},
     422, "body"),
    ("binary empty", {"content": b"", "params": {"model": "int8"}, "headers": BINARY}, 422, "body"),
    ("binary no model", {"content": bytes(784), "headers": BINARY}, 422, "model"),
    ("query model too long", {"content": bytes(784), "params": {"model": "m" * 65},
                              "headers": BINARY}, 422, "model"),
    ("query/body model mismatch", {"json": {"model": "int8", "image": _image()},
                                   "params": {"model": "tinycnn"}}, 422, "model"),
    ("oversized body", {"content": bytes(300_000), "params": {"model": "int8"}, "headers": BINARY},
     413, "body"),
    ("text/plain", {"content": b"hello", "headers": {"content-type": "text/plain"}},
     415, "content-type"),
    ("request_id too long", {"json": {"model": "int8", "image": _image(), "request_id": "r" * 200}},
     422, "request_id"),
]  # fmt: skip

BAD_GENERATE = [
    ("max_tokens 0", {"model": "slm", "max_tokens": 0}, 422, "max_tokens"),
    ("max_tokens huge", {"model": "slm", "max_tokens": 10**6}, 422, "max_tokens"),
    ("prompt not a string", {"model": "slm", "prompt": 5}, 422, "prompt"),
    ("prompt too long", {"model": "slm", "prompt": "x" * 9000}, 422, "prompt"),
    ("bad length", {"model": "slm", "length": "medium"}, 422, "length"),
    ("vision model", {"model": "int8"}, 404, "model"),
    ("llm not on edge", {"model": "llm"}, 404, "model"),
    ("missing model", {"prompt": "hi"}, 422, "model"),
    ("extra field", {"model": "slm", "temperature": 0.7}, 422, "temperature"),
    ("negative seed", {"model": "slm", "seed": -1}, 422, "seed"),
    ("fractional seed", {"model": "slm", "seed": 0.5}, 422, "seed"),
]


@pytest.mark.parametrize(
    ("what", "kwargs", "status", "field"), BAD_INFER, ids=[b[0] for b in BAD_INFER]
)
def test_bad_infer_input_is_4xx_naming_the_field(
    what: str, kwargs: dict, status: int, field: str, real_tiers: dict[str, TierProcess]
) -> None:
    r = httpx.post(f"{real_tiers['edge'].url}/v1/infer", timeout=10.0, **kwargs)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert set(body) == {"detail", "field", "errors"}, body  # common.httperrors shape
    assert body["field"] == field, f"{what}: {body}"
    assert field.split("[")[0] in body["detail"], body


@pytest.mark.parametrize(
    ("what", "body", "status", "field"), BAD_GENERATE, ids=[b[0] for b in BAD_GENERATE]
)
def test_bad_generate_input_is_4xx_naming_the_field(
    what: str, body: dict, status: int, field: str, real_tiers: dict[str, TierProcess]
) -> None:
    r = httpx.post(f"{real_tiers['edge'].url}/v1/generate", json=body, timeout=10.0)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    assert r.json()["field"] == field, r.json()
    assert r.json()["errors"][0]["field"] == field, r.json()


def test_generate_is_deterministic_and_labelled(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["cloud"].url
    a = httpx.post(f"{url}/v1/generate", json={"model": "llm", "prompt": "why", "length": "long"})
    b = httpx.post(f"{url}/v1/generate", json={"model": "llm", "prompt": "why", "length": "long"})
    assert a.status_code == b.status_code == 200
    da, db = a.json(), b.json()
    assert da["text"] == db["text"] and len(da["text"].split()) == da["tokens"] == 128
    assert da["quality"] == 0.92 and da["length"] == "long"
    assert 0.01 <= da["confidence"] <= 0.999  # emulated, drawn per request (test_tier_lm)
    assert da["emulated"] == {"device_time": True, "energy": True, "lm": True}
    # fast LM profile of the fixture: ttft 2 ms + 127 × 0.01 ms
    assert da["timing"]["target_ms"] == pytest.approx(2.0 + 127 * 0.01)
    # held at least the emulated time; late by < 1 ms (10 ms on an overloaded host)
    late_ms = da["timing"]["total_ms"] - da["timing"]["target_ms"]
    overloaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    assert -0.05 <= late_ms < (10.0 if overloaded else 1.0), da["timing"]
    short = httpx.post(f"{url}/v1/generate", json={"model": "llm", "max_tokens": 8}).json()
    assert short["length"] == "short" and short["tokens"] == 8 and short["quality"] == 0.90


def test_generate_stream(real_tiers: dict[str, TierProcess]) -> None:
    body = {"model": "slm", "prompt": "p", "max_tokens": 40, "stream": True}
    with httpx.stream("POST", f"{real_tiers['mcu'].url}/v1/generate", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    final = lines[-1]
    assert final["done"] is True and final["tokens"] == 40
    assert 0.01 <= final["confidence"] <= 0.999 and final["load"]["concurrency"] == 1
    streamed = [w for line in lines[:-1] for w in line["tokens"]]
    assert " ".join(streamed) == final["text"]


def test_models_health_ready(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["mcu"].url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "tier": "mcu"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = httpx.get(f"{url}/v1/models").json()
    assert info["tier"] == "mcu" and info["concurrency"] == 1
    assert info["on_disconnect"] == "finish"
    names = {m["name"]: m for m in info["models"]}
    assert set(names) == {"tinycnn", "int8", "slm"}
    assert names["int8"]["latency_ms"] == 25.0 and names["int8"]["dtype"] == "int8"
    assert names["slm"]["kind"] == "lm" and names["slm"]["emulated"] is True
