"""Schemathesis against each live tier's OpenAPI: no server error, no schema violation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.tier.process import TierProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 150  # per tier, positive and negative cases mixed: well under 60 s


def _fuzz(tier: str, url: str) -> dict[str, int]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    strategy = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    seen: dict[str, int] = {}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)
        seen[f"{case.method} {case.path} {response.status_code}"] = (
            seen.get(f"{case.method} {case.path} {response.status_code}", 0) + 1
        )

    run()
    print(f"{tier}: {sorted(seen.items())}")
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["mcu", "edge", "cloud"])
def test_openapi_fuzz(tier: str, real_tiers: dict[str, TierProcess]) -> None:
    seen = _fuzz(tier, real_tiers[tier].url)
    for wanted in ("POST /v1/infer 200", "POST /v1/generate 200", "GET /v1/status 200"):
        assert any(k.startswith(wanted) for k in seen), (wanted, sorted(seen.items()))


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["gpu", "npu"])
def test_openapi_fuzz_accelerator_classes(
    tier: str, tier_factory: Callable[..., TierProcess]
) -> None:
    """gpu (dynamic batching, real mode) and npu: no language model, so every generate is a 404
    (its model schema stays open: an empty enum would be a schema nothing satisfies)."""
    seen = _fuzz(tier, tier_factory(tier, device_time="real").url)
    for wanted in ("POST /v1/infer 200", "POST /v1/generate 404", "GET /v1/status 200"):
        assert any(k.startswith(wanted) for k in seen), (wanted, sorted(seen.items()))


@pytest.mark.slow
def test_openapi_fuzz_chains(tier_factory: Callable[..., TierProcess]) -> None:
    """A node serving chains (/v1/chain: hand-read query, framing headers, binary bodies, JSON
    or tensor answers): no server error, every answer as documented."""
    tp = tier_factory("edge", device_time="real",
                      config_overrides={"chains": {"split-int8": {}, "exit-fp32": {}}})
    seen = _fuzz("edge+chains", tp.url)
    assert any(k.startswith("POST /v1/chain 4") for k in seen), sorted(seen.items())
