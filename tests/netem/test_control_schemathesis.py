"""Schemathesis against the link proxy's control API (its own OpenAPI document), with and without
a token: no server error, every status, content type and body as documented."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from conftest import proxy_process
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 150  # positive and negative cases mixed: well under 60 s
TOKEN = "schemathesis-token"


@pytest.mark.slow
@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_control_api_openapi_fuzz(with_token: bool, tmp_path: Path) -> None:
    token_file = None
    if with_token:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
    links = {"device-edge": {"target": "127.0.0.1:9", "rtt_range_ms": [5, 15], "dst": "edge"},
             "device-cloud": {"target": "127.0.0.1:9", "delay_ms": 10},
             "edge-cloud": {"src": "edge", "dst": "cloud", "delay_ms": 5}}  # a hop only
    paths = {"via-edge": {"hops": ["device-edge", "edge-cloud"], "target": "127.0.0.1:9"}}
    with proxy_process(links, token_file=token_file, paths=paths) as ready:
        url = ready["control"]
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        strategy = st.one_of(
            schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
            schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )
        headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
        seen: Counter[str] = Counter()

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=strategy)
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=url, checks=CHECKS, timeout=30,
                                              headers=headers)
            seen[f"{case.method} {case.path} {response.status_code}"] += 1

        fuzz()
        assert ready["process"].poll() is None, "the proxy died under the fuzzer"
    print(f"{'token' if with_token else 'open'}: {sorted(seen.items())}")
    for wanted in ("PUT /v1/links/{name} 200", "PUT /v1/links/{name} 422",
                   "PUT /v1/links/{name}/fidelity 200", "GET /v1/links/{name} 200"):
        assert any(k.startswith(wanted) for k in seen), (wanted, sorted(seen.items()))
    assert any(k.startswith("GET /v1/links 200") for k in seen), sorted(seen.items())
    assert any(k.startswith("GET /v1/paths") and k.endswith(" 200") for k in seen), \
        sorted(seen.items())
