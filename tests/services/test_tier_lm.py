"""The LM stub's confidence: the teaching simulator's law, N(0.6 + 0.3 × quality, sd 0.1)
clipped to [0.01, 0.999], a fresh draw per request; deterministic for (seed, model) with a
request seed, else from the tier's own generator seeded from jitter_seed."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from services.tier import lm
from services.tier.app import create_app
from services.tier.config import load_tier_config
from services.tier.process import TierProcess


def test_confidence_law() -> None:
    rng = np.random.default_rng(7)
    for quality in (0.6, 0.7, 0.9, 0.92):
        draws = np.array([lm.confidence(quality, rng) for _ in range(20_000)])
        assert draws.min() >= 0.01 and draws.max() <= 0.999
        mean = 0.6 + 0.3 * quality
        law = np.clip(np.random.default_rng(1).normal(mean, 0.1, 200_000), 0.01, 0.999)
        assert draws.mean() == pytest.approx(law.mean(), abs=0.004), quality
        assert draws.std() == pytest.approx(law.std(), abs=0.004), quality
        # below the clip, the draws are the plain normal's
        assert np.median(draws) == pytest.approx(mean, abs=0.004), quality
    assert lm.confidence(10.0, rng) == 0.999 and lm.confidence(-10.0, rng) == 0.01
    a = [lm.confidence(0.7, lm.request_rng(5, "slm")) for _ in range(2)]
    assert a[0] == a[1] != lm.confidence(0.7, lm.request_rng(5, "llm"))


def test_seeded_confidence_is_deterministic(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    body = {"model": "slm", "prompt": "p", "max_tokens": 4, "seed": 42}
    with httpx.Client(base_url=url, timeout=10.0) as client:
        a = client.post("/v1/generate", json=body).json()
        b = client.post("/v1/generate", json=body).json()
        c = client.post("/v1/generate", json={**body, "seed": 43}).json()
        with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
            final = [json.loads(line) for line in r.iter_lines() if line][-1]
    want = lm.confidence(a["quality"], lm.request_rng(42, "slm"))
    assert a["confidence"] == b["confidence"] == final["confidence"] == want
    assert c["confidence"] != a["confidence"]
    assert final["done"] is True


def test_unseeded_confidence_is_drawn_per_request(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["cloud"].url
    with httpx.Client(base_url=url, timeout=10.0) as client:
        answers = [client.post("/v1/generate", json={"model": "llm", "max_tokens": 2}).json()
                   for _ in range(40)]  # fmt: skip
    conf = np.array([a["confidence"] for a in answers])
    quality = answers[0]["quality"]  # 0.90: N(0.87, 0.1), ~10 % clipped at 0.999
    inside = conf[conf < 0.999]
    assert len(set(inside.tolist())) == len(inside) >= 20, conf  # a fresh draw each time
    assert conf.min() >= 0.01 and conf.max() <= 0.999
    # 40 draws: the median is within ~4 standard errors of 0.87
    assert abs(np.median(conf) - (0.6 + 0.3 * quality)) < 0.08, conf


def _confidences(jitter_seed: int, n: int) -> list[float]:
    """``n`` unseeded LM answers of a fresh in-process app (lifespan run by hand)."""
    overrides = {"jitter_seed": jitter_seed, "realtime_holds": False,
                 "lm": {"slm": {"ttft_ms": 1.0}}}  # fmt: skip
    app = create_app(load_tier_config("mcu", overrides=overrides, use_env=False))

    async def run() -> list[float]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tier") as c:
                body = {"model": "slm", "max_tokens": 1}
                return [(await c.post("/v1/generate", json=body)).json()["confidence"]
                        for _ in range(n)]  # fmt: skip

    return asyncio.run(run())


@pytest.mark.usefixtures("need_models")
def test_tier_generator_is_seeded_from_jitter_seed() -> None:
    assert _confidences(3, 5) == _confidences(3, 5) != _confidences(4, 5)
