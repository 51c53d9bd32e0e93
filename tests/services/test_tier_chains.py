"""Research chains on live tiers (``POST /v1/chain``): head on one node, tail on another, equal to
the whole model bit for bit at every cut; early exit; device time by segment share; bad input;
config refusals; top_k; the variants as ordinary models, at the manifest's accuracy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import require_models
from tierhttp import burst, metric, request_bytes

from models.catalog import chain_spec
from models.chain import Chain, CutTensor, TensorMeta
from models.paths import manifest_path, models_dir
from models.runtime import LiteRTModel
from services.tier.config import TierConfigError, load_tier_config
from services.tier.process import TierProcess, TierStartError, start_tier

TENSOR = "application/x-edgebed-tensor"
BINARY = {"content-type": "application/octet-stream"}
ALL_CHAINS = {"split-int8": {}, "split-fp32": {}, "exit-int8": {}, "exit-fp32": {}}
SPLITS = ("split-int8", "split-fp32")
EXITS = ("exit-int8", "exit-fp32")
WHOLE = {"split-int8": "int8.tflite", "split-fp32": "fp32.tflite"}


# --- helpers ---


def offline_chain(name: str) -> Chain:
    return Chain([models_dir() / s.file for s in chain_spec(name).segments])


def framing(tensor: CutTensor) -> dict[str, str]:
    meta = tensor.meta
    return {"content-type": TENSOR, "x-edgebed-dtype": meta.dtype,
            "x-edgebed-shape": ",".join(str(d) for d in meta.shape),
            "x-edgebed-scale": repr(float(meta.scale)),
            "x-edgebed-zero-point": str(int(meta.zero_point))}  # fmt: skip


def read_tensor(r: httpx.Response) -> tuple[CutTensor, dict[str, Any]]:
    """The tensor of a binary answer and its x-edgebed-answer header."""
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == TENSOR, r.headers
    meta = TensorMeta(r.headers["x-edgebed-dtype"],
                      tuple(int(d) for d in r.headers["x-edgebed-shape"].split(",")),
                      float(r.headers["x-edgebed-scale"]), int(r.headers["x-edgebed-zero-point"]))
    answer = json.loads(r.headers["x-edgebed-answer"])
    assert len(r.content) == meta.nbytes == answer["bytes_out"]
    return CutTensor(r.content, meta), answer


def run(client: httpx.Client, chain: str, source: np.ndarray | CutTensor, start: int = 0,
        **query: Any) -> httpx.Response:
    """One /v1/chain request: the image at start 0, else the tensor at cut ``start``."""
    params = {"chain": chain, "start": start, **{k: v for k, v in query.items() if v is not None}}
    if isinstance(source, CutTensor):
        return client.post("/v1/chain", params=params, content=source.data,
                           headers=framing(source))  # fmt: skip
    return client.post("/v1/chain", params=params, content=source.tobytes(), headers=BINARY)


def sample(eval_set: dict[str, np.ndarray], n: int) -> np.ndarray:
    return np.concatenate([eval_set["easy_images"][: n // 2], eval_set["hard_images"][: n // 2]])


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, TierProcess]]:
    """Two real-mode nodes holding every chain: a head (edge) and a tail (cloud)."""
    require_models()
    started: dict[str, TierProcess] = {}
    try:
        for name in ("edge", "cloud"):
            started[name] = start_tier(name, device_time="real",
                                       config_overrides={"chains": ALL_CHAINS})  # fmt: skip
        yield started
    finally:
        for tp in started.values():
            tp.stop()


@pytest.fixture
def clients(nodes: dict[str, TierProcess]) -> Iterator[dict[str, httpx.Client]]:
    out = {name: httpx.Client(base_url=tp.url, timeout=30.0) for name, tp in nodes.items()}
    yield out
    for c in out.values():
        c.close()


# --- head on one node, tail on another: the whole model, bit for bit ---


@pytest.mark.slow
@pytest.mark.parametrize("chain", SPLITS)
def test_split_head_and_tail_over_http_equal_the_whole_model(
    chain: str, clients: dict[str, httpx.Client], eval_set: dict[str, np.ndarray]
) -> None:
    """Every cut, 200 evaluation images: the head node's tensor is Chain.head's, byte for byte;
    the tail node's probabilities from it are the whole model's and Chain.probabilities'."""
    offline = offline_chain(chain)
    whole = LiteRTModel(models_dir() / WHOLE[chain])
    images = sample(eval_set, 200)
    want = [whole.probabilities(img)[0] for img in images]
    for img, w in zip(images[:20], want[:20], strict=True):  # the offline chain is the model
        assert np.array_equal(offline.probabilities(img), w)
    for cut in range(1, len(offline.segments)):
        bad_tensor, bad_probs = [], []
        for i, img in enumerate(images):
            tensor, answer = read_tensor(run(clients["edge"], chain, img, stop=cut))
            expected = offline.head(img, cut)
            if tensor != expected:
                bad_tensor.append(i)
            assert answer["cut"] == cut and answer["bytes_in"] == 784 and answer["exits"] == []
            assert [s["index"] for s in answer["segments"]] == list(range(1, cut + 1))
            r = run(clients["cloud"], chain, tensor, start=cut)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
            d = r.json()
            assert d["exit"] == len(offline.segments) and d["bytes_in"] == len(tensor.data)
            probs = np.array(d["probabilities"])
            if not np.array_equal(probs, want[i]) or d["prediction"] != int(np.argmax(want[i])):
                bad_probs.append(i)
        assert not bad_tensor, f"{chain} cut {cut}: head tensors differ for images {bad_tensor[:10]}"
        assert not bad_probs, f"{chain} cut {cut}: tail probabilities differ for {bad_probs[:10]}"


@pytest.mark.slow
@pytest.mark.parametrize("chain", EXITS)
def test_exit_chain_stages_over_http_equal_the_offline_chain(
    chain: str, clients: dict[str, httpx.Client], eval_set: dict[str, np.ndarray]
) -> None:
    """Exit k answered on one node is Chain.probabilities(until=k); its tensor (output=tensor)
    continued on another node gives the last exit, as Chain.probabilities does."""
    offline = offline_chain(chain)
    images = sample(eval_set, 200)
    for cut in (1, 2):
        for img in images:
            r = run(clients["edge"], chain, img, stop=cut)
            d = r.json()
            assert r.status_code == 200 and d["exit"] == cut, d
            assert np.array_equal(d["probabilities"], offline.probabilities(img, until=cut))
            assert d["exits"][-1]["segment"] == cut and d["exits"][-1]["passed"] is None
            tensor, answer = read_tensor(run(clients["edge"], chain, img, stop=cut,
                                             output="tensor"))  # fmt: skip
            assert tensor == offline.head(img, cut) and answer["cut"] == cut
            assert [e["segment"] for e in answer["exits"]] == list(range(1, cut + 1))
            tail = run(clients["cloud"], chain, tensor, start=cut).json()
            assert tail["exit"] == 3
            assert np.array_equal(tail["probabilities"], offline.probabilities(img))


@pytest.mark.slow
@pytest.mark.parametrize("chain", EXITS)
@pytest.mark.parametrize(("criterion", "threshold"), [("confidence", 0.9), ("entropy", 0.1)])
def test_early_exit_takes_the_first_exit_that_passes(
    chain: str, criterion: str, threshold: float, clients: dict[str, httpx.Client],
    eval_set: dict[str, np.ndarray],
) -> None:
    """The exit answering is the first whose criterion passes (the last one otherwise), with
    that exit's probabilities, and only the segments up to it ran."""
    offline = offline_chain(chain)
    taken = []
    for img in sample(eval_set, 200):
        exits = offline.exits(img)
        ent = [float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(10)) for p in exits]
        ok = [p.max() >= threshold if criterion == "confidence" else h <= threshold
              for p, h in zip(exits, ent, strict=True)]  # fmt: skip
        want = next((k for k, passed in enumerate(ok, 1) if passed), 3)
        d = run(clients["edge"], chain, img, threshold=threshold, criterion=criterion).json()
        assert d["exit"] == want, (d["exits"], ok)
        assert np.array_equal(d["probabilities"], exits[want - 1])
        assert [s["index"] for s in d["segments"]] == list(range(1, want + 1))
        assert [e["passed"] for e in d["exits"]] == ok[:want]
        for e, p, h in zip(d["exits"], exits, ent, strict=False):
            assert e["confidence"] == pytest.approx(p.max()) and e["entropy"] == pytest.approx(h)
        taken.append(want)
    assert len(set(taken)) >= 2, f"every image left at the same exit: {set(taken)}"


def test_no_exit_passing_before_stop_returns_the_tensor(
    clients: dict[str, httpx.Client], eval_set: dict[str, np.ndarray]
) -> None:
    """A threshold no exit up to stop (< n) passes: the tensor at stop, for the next node."""
    chain = "exit-int8"
    offline = offline_chain(chain)
    img = next(img for img in eval_set["hard_images"]
               if max(p.max() for p in offline.exits(img)[:2]) < 0.9)  # fmt: skip
    tensor, answer = read_tensor(run(clients["edge"], chain, img, stop=2, threshold=0.9))
    assert answer["cut"] == 2 and tensor == offline.head(img, 2)
    assert [(e["segment"], e["passed"]) for e in answer["exits"]] == [(1, False), (2, False)]
    assert set(answer) == {"tier", "chain", "request_id", "cut", "exits", "segments", "timing",
                           "energy", "load", "emulated", "bytes_in", "bytes_out"}  # fmt: skip
    tail = run(clients["cloud"], chain, tensor, start=2, threshold=0.9).json()
    assert tail["exit"] == 3 and np.array_equal(tail["probabilities"], offline.probabilities(img))


def test_a_tensor_in_another_quantization_is_requantized(
    clients: dict[str, httpx.Client], eval_set: dict[str, np.ndarray]
) -> None:
    """Scale and zero point other than the receiving segment's: requantized, as
    CutTensor.encoded_for does, not refused."""
    offline = offline_chain("split-int8")
    img = eval_set["easy_images"][3]
    head = offline.head(img, 4)
    other = TensorMeta(head.meta.dtype, (200,), head.meta.scale * 2.0, head.meta.zero_point + 10)
    moved = CutTensor.of(head.encoded_for(other), other)
    assert moved.data != head.data
    d = run(clients["cloud"], "split-int8", moved, start=4).json()
    assert np.array_equal(d["probabilities"], offline.tail(moved, 4))


def test_top_k_on_infer_and_chain(
    clients: dict[str, httpx.Client], eval_set: dict[str, np.ndarray]
) -> None:
    img = eval_set["hard_images"][7]
    for r in (clients["edge"].post("/v1/infer", params={"model": "fp32", "top_k": 3},
                                   content=img.tobytes(), headers=BINARY),
              run(clients["edge"], "split-fp32", img, top_k=3)):  # fmt: skip
        d = r.json()
        assert r.status_code == 200, d
        probs = np.array(d["probabilities"])
        top = d["top_k"]
        assert top["indices"] == [int(i) for i in np.argsort(-probs, kind="stable")[:3]]
        assert top["values"] == [d["probabilities"][i] for i in top["indices"]]
        assert top["values"] == sorted(top["values"], reverse=True)
        assert top["indices"][0] == d["prediction"]
    plain = clients["edge"].post("/v1/infer?model=int8", content=img.tobytes(), headers=BINARY)
    assert "top_k" not in plain.json()


def test_models_lists_chains(nodes: dict[str, TierProcess]) -> None:
    info = httpx.get(f"{nodes['edge'].url}/v1/models").json()
    chains = {c["name"]: c for c in info["chains"]}
    assert set(chains) == set(ALL_CHAINS)
    c = chains["split-int8"]
    assert c["kind"] == "split" and c["held"] == [1, 6] and c["latency_ms"] == 10.0
    assert c["device_time"] == "real" and [s["index"] for s in c["segments"]] == list(range(1, 7))
    assert sum(s["share"] for s in c["segments"]) == pytest.approx(1.0)
    assert all(s["held"] for s in c["segments"])
    assert c["segments"][3]["features"] == {"dtype": "int8", "shape": [1, 200],
                                            "scale": c["segments"][4]["input"]["scale"],
                                            "zero_point": -128, "bytes": 200}  # fmt: skip
    assert chains["exit-fp32"]["latency_ms"] == 22.0  # edge's simulator fp32 latency
    assert [s["probabilities"] is not None for s in chains["exit-int8"]["segments"]] == [True] * 3


# --- bad input: 4xx naming the field ---

INT8_CUT2 = {"content-type": TENSOR, "x-edgebed-dtype": "int8", "x-edgebed-shape": "1,13,13,8",
             "x-edgebed-scale": "0.0095", "x-edgebed-zero-point": "-128"}  # fmt: skip
FP32_CUT4 = {"content-type": TENSOR, "x-edgebed-dtype": "float32", "x-edgebed-shape": "1,2304"}


def _without(headers: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != key}


BAD_CHAIN = [
    # (what, query, headers, body, status, field, needle in the detail)
    ("unknown chain", {"chain": "split-int4"}, BINARY, bytes(784), 404, "chain", "split-int8"),
    ("chain missing", {}, BINARY, bytes(784), 422, "chain", "exit-int8"),
    ("start past the held", {"chain": "split-int8", "start": 6}, INT8_CUT2, bytes(1352), 422,
     "start", "0..5"),
    ("start negative", {"chain": "split-int8", "start": -1}, BINARY, bytes(784), 422, "start",
     "0..5"),
    ("start not a number", {"chain": "split-int8", "start": "two"}, BINARY, bytes(784), 422,
     "start", "0..5"),
    ("stop = start", {"chain": "split-int8", "start": 2, "stop": 2}, INT8_CUT2, bytes(1352), 422,
     "stop", "3..6"),
    ("stop past n", {"chain": "split-int8", "stop": 7}, BINARY, bytes(784), 422, "stop", "1..6"),
    ("dtype differs", {"chain": "split-int8", "start": 2},
     {**INT8_CUT2, "x-edgebed-dtype": "float32"}, bytes(1352 * 4), 422, "x-edgebed-dtype",
     "int8"),
    ("dtype missing", {"chain": "split-fp32", "start": 4}, _without(FP32_CUT4, "x-edgebed-dtype"),
     bytes(9216), 422, "x-edgebed-dtype", "float32"),
    ("shape count differs", {"chain": "split-int8", "start": 2},
     {**INT8_CUT2, "x-edgebed-shape": "1,13,13,4"}, bytes(676), 422, "x-edgebed-shape",
     "1,13,13,8"),
    ("shape not numbers", {"chain": "split-int8", "start": 2},
     {**INT8_CUT2, "x-edgebed-shape": "a,b"}, bytes(1352), 422, "x-edgebed-shape", "1352"),
    ("shape missing", {"chain": "split-fp32", "start": 4}, _without(FP32_CUT4, "x-edgebed-shape"),
     bytes(9216), 422, "x-edgebed-shape", "1,2304"),
    ("body shorter than the shape", {"chain": "split-int8", "start": 2}, INT8_CUT2, bytes(1351),
     422, "body", "1352 bytes"),
    ("float body of the wrong length", {"chain": "split-fp32", "start": 4}, FP32_CUT4,
     bytes(2304), 422, "body", "9216 bytes"),
    ("int8 without a scale", {"chain": "split-int8", "start": 2},
     _without(INT8_CUT2, "x-edgebed-scale"), bytes(1352), 422, "x-edgebed-scale", "required"),
    ("int8 without a zero point", {"chain": "split-int8", "start": 2},
     _without(INT8_CUT2, "x-edgebed-zero-point"), bytes(1352), 422, "x-edgebed-zero-point",
     "-128..127"),
    ("scale NaN", {"chain": "split-int8", "start": 2}, {**INT8_CUT2, "x-edgebed-scale": "nan"},
     bytes(1352), 422, "x-edgebed-scale", "positive"),
    ("zero point out of range", {"chain": "split-int8", "start": 2},
     {**INT8_CUT2, "x-edgebed-zero-point": "300"}, bytes(1352), 422, "x-edgebed-zero-point",
     "-128..127"),
    ("image body too short", {"chain": "split-int8"}, BINARY, bytes(783), 422, "body", "784"),
    ("threshold above 1", {"chain": "exit-int8", "threshold": 1.5}, BINARY, bytes(784), 422,
     "threshold", "0..1"),
    ("threshold negative", {"chain": "exit-int8", "threshold": -0.1}, BINARY, bytes(784), 422,
     "threshold", "0..1"),
    ("threshold NaN", {"chain": "exit-int8", "threshold": "nan"}, BINARY, bytes(784), 422,
     "threshold", "0..1"),
    ("threshold text", {"chain": "exit-int8", "threshold": "high"}, BINARY, bytes(784), 422,
     "threshold", "0..1"),
    ("top_k 0", {"chain": "exit-int8", "top_k": 0}, BINARY, bytes(784), 422, "top_k", "1..10"),
    ("top_k 11", {"chain": "exit-int8", "top_k": 11}, BINARY, bytes(784), 422, "top_k", "1..10"),
    ("bad criterion", {"chain": "exit-int8", "threshold": 0.5, "criterion": "margin"}, BINARY,
     bytes(784), 422, "criterion", "confidence, entropy"),
    ("bad output", {"chain": "exit-int8", "output": "json"}, BINARY, bytes(784), 422, "output",
     "auto, tensor"),
    ("tensor output at the last segment", {"chain": "split-int8", "output": "tensor"}, BINARY,
     bytes(784), 422, "output", "stop < 6"),
    ("octet-stream at a cut", {"chain": "split-int8", "start": 2},
     {**INT8_CUT2, "content-type": "application/octet-stream"}, bytes(1352), 415, "content-type",
     TENSOR),
    ("tensor type at cut 0", {"chain": "split-int8"}, {**INT8_CUT2, "x-edgebed-shape": "1,28,28"},
     bytes(784), 415, "content-type", "octet-stream"),
    ("JSON body", {"chain": "split-int8"}, {"content-type": "application/json"}, b"{}", 415,
     "content-type", "octet-stream"),
    ("host lead out of range", {"chain": "split-int8"},
     {**BINARY, "x-edgebed-host-lead-ms": "11"}, bytes(784), 422, "x-edgebed-host-lead-ms",
     "0..10"),
    ("request id too long", {"chain": "split-int8"}, {**BINARY, "x-request-id": "r" * 129},
     bytes(784), 422, "x-request-id", "128"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "query", "headers", "body", "status", "field", "needle"),
                         BAD_CHAIN, ids=[c[0] for c in BAD_CHAIN])  # fmt: skip
def test_bad_chain_input_is_4xx_naming_the_field(
    what: str, query: dict, headers: dict, body: bytes, status: int, field: str, needle: str,
    clients: dict[str, httpx.Client],
) -> None:
    r = clients["edge"].post("/v1/chain", params=query, headers=headers, content=body)
    d = r.json()
    assert r.status_code == status, f"{what}: {r.status_code} {d}"
    assert set(d) == {"detail", "field", "errors"} and d["field"] == field, f"{what}: {d}"
    assert field in d["detail"] and needle in d["detail"], f"{what}: {d}"


@pytest.mark.parametrize("value", ["0", "11", "-1", "x", "1.5"])
def test_bad_top_k_on_infer(value: str, clients: dict[str, httpx.Client]) -> None:
    r = clients["edge"].post("/v1/infer", params={"model": "int8", "top_k": value},
                             content=bytes(784), headers=BINARY)  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "top_k", r.text
    assert "1..10" in r.json()["detail"]


def test_a_tier_without_chains_answers_404(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory("mcu", device_time="real")
    r = httpx.post(f"{tp.url}/v1/chain?chain=split-int8", content=bytes(784), headers=BINARY)
    assert r.status_code == 404 and r.json()["field"] == "chain"
    assert "chains here: none" in r.json()["detail"]


# --- nodes holding part of a chain ---


def test_nodes_holding_part_of_a_chain(
    tier_factory: Callable[..., TierProcess], eval_set: dict[str, np.ndarray]
) -> None:
    """A head node holding segments 1..3 refuses to run past them; the tail node holding 4..6
    refuses to start before them; together they compute the whole model."""
    head = tier_factory("edge-a", node_class="edge", device_time="real",
                        config_overrides={"chains": {"split-int8": {"segments": [1, 3]}}})
    tail = tier_factory("edge-b", node_class="edge", device_time="real",
                        config_overrides={"chains": {"split-int8": {"segments": [4, 6]}}})
    img = eval_set["hard_images"][11]
    with httpx.Client(base_url=head.url, timeout=10.0) as h, \
            httpx.Client(base_url=tail.url, timeout=10.0) as t:  # fmt: skip
        for query in ({"stop": 6}, {}):  # the default stop is the chain's last segment
            d = run(h, "split-int8", img, **query).json()
            assert d["field"] == "stop" and "1..3" in d["detail"], d
            assert "holds segments 1..3 of 6" in d["detail"], d
        tensor, answer = read_tensor(run(h, "split-int8", img, stop=3))
        assert [s["name"] for s in answer["segments"]] == ["conv1", "pool1", "conv2"]
        for start in (0, 2):
            body = img if start == 0 else offline_chain("split-int8").head(img, start)
            d = run(t, "split-int8", body, start=start).json()
            assert d["field"] == "start" and "3..5" in d["detail"], d
        d = run(t, "split-int8", tensor, start=3).json()
        whole = LiteRTModel(models_dir() / "int8.tflite").probabilities(img)[0]
        assert np.array_equal(d["probabilities"], whole)
        assert [s["index"] for s in d["segments"]] == [4, 5, 6]
        info = t.get("/v1/models").json()["chains"][0]
        assert [s["held"] for s in info["segments"]] == [False] * 3 + [True] * 3


# --- device time, early exit and metrics (profile mode) ---


def test_device_time_is_the_share_of_the_segments_run(
    tier_factory: Callable[..., TierProcess], eval_set: dict[str, np.ndarray]
) -> None:
    """Profile mode: a run is held for latency_ms × the share of the segments it ran; an early
    exit holds only its own segments' share; the exit and segment counters count them."""
    latency = 60.0
    tp = tier_factory("edge", config_overrides={"chains": {
        "exit-int8": {"latency_ms": latency}, "split-int8": {"latency_ms": latency}}})
    spec = chain_spec("exit-int8")
    offline = offline_chain("exit-int8")
    easy = next(img for img in eval_set["easy_images"] if offline.exits(img)[0].max() >= 0.9)
    hard = next(img for img in eval_set["hard_images"]
                if all(p.max() < 0.9 for p in offline.exits(img)[:2]))  # fmt: skip
    url = tp.url
    before = {k: metric(url, "edgebed_tier_exits_total", tier="edge", chain="exit-int8",
                        exit=str(k)) for k in (1, 2, 3)}  # fmt: skip
    with httpx.Client(base_url=url, timeout=10.0) as c:
        early = run(c, "exit-int8", easy, threshold=0.9).json()
        full = run(c, "exit-int8", hard, threshold=0.9).json()
        head_r = run(c, "split-int8", easy, stop=2)
    assert early["exit"] == 1 and len(early["segments"]) == 1
    assert early["timing"]["target_ms"] == pytest.approx(latency * spec.share(1, 1))
    assert early["segments"][0]["device_ms"] == pytest.approx(early["timing"]["target_ms"])
    assert full["exit"] == 3 and [s["index"] for s in full["segments"]] == [1, 2, 3]
    assert full["timing"]["target_ms"] == pytest.approx(latency)
    assert [s["device_ms"] for s in full["segments"]] == pytest.approx(
        [latency * s.share for s in spec.segments])
    for d in (early, full):
        assert d["emulated"] == {"device_time": True, "energy": True, "lm": False,
                                 "segment_shares": True}  # fmt: skip
        t = d["timing"]
        assert t["target_ms"] - 0.05 <= t["emulated_ms"] <= t["target_ms"] + 5.0, t
    _, head = read_tensor(head_r)
    split = chain_spec("split-int8")
    assert head["timing"]["target_ms"] == pytest.approx(latency * split.share(1, 2))
    after = {k: metric(url, "edgebed_tier_exits_total", tier="edge", chain="exit-int8",
                       exit=str(k)) for k in (1, 2, 3)}  # fmt: skip
    assert {k: after[k] - before[k] for k in after} == {1: 1, 2: 0, 3: 1}
    seg = {k: metric(url, "edgebed_tier_chain_segments_total", tier="edge", chain="exit-int8",
                     segment=str(k)) for k in (1, 2, 3)}  # fmt: skip
    assert seg == {1: 2, 2: 1, 3: 1}
    assert metric(url, "edgebed_tier_tensor_bytes_total", tier="edge", chain="split-int8",
                  direction="out") == 1352  # fmt: skip
    assert metric(url, "edgebed_tier_tensor_bytes_total", tier="edge", chain="exit-int8",
                  direction="in") == 2 * 784  # fmt: skip
    assert metric(url, "edgebed_requests_total", tier="edge", model="exit-int8",
                  outcome="ok") == 2  # fmt: skip
    assert metric(url, "edgebed_emulated_seconds_count", tier="edge", model="exit-int8") == 2
    assert metric(url, "edgebed_emulated_seconds_sum", tier="edge", model="exit-int8") == \
        pytest.approx((early["timing"]["emulated_ms"] + full["timing"]["emulated_ms"]) / 1000)


def test_chain_requests_are_counted_and_queued_like_infer(
    tier_factory: Callable[..., TierProcess],
) -> None:
    """Chain requests share the device slots: at concurrency 1 with queue_limit 1 a burst of
    three gets one 503 (Retry-After), and errors are counted under the chain's name."""
    tp = tier_factory("mcu", config_overrides={"queue_limit": 1, "chains": {
        "split-int8": {"latency_ms": 300.0}}})
    with httpx.Client(base_url=tp.url, timeout=10.0) as c:
        assert run(c, "split-int8", np.zeros(784, np.uint8), top_k=0).status_code == 422
        assert run(c, "split-int4", np.zeros(784, np.uint8)).status_code == 404
    req = request_bytes(tp.url, "POST", "/v1/chain?chain=split-int8", bytes(784), BINARY)
    answers = burst(tp.url, [req] * 3)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503], codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.header("retry-after") or 0) >= 1
    served = [a.json() for a in answers if a.status_code == 200]
    assert sorted(round(d["timing"]["queue_ms"] / 100) for d in served) == [0, 3]
    counts = {o: metric(tp.url, "edgebed_requests_total", tier="mcu", model="split-int8",
                        outcome=o) for o in ("ok", "client_error", "queue_full")}  # fmt: skip
    assert counts == {"ok": 2, "client_error": 1, "queue_full": 1}
    assert metric(tp.url, "edgebed_requests_total", tier="mcu", model="unknown",
                  outcome="not_found") == 1  # fmt: skip


# --- config: memory budget, INT8-only classes, ranges ---


@pytest.mark.parametrize(
    ("tier", "chains", "needles"),
    [
        ("mcu", {"split-fp32": {}}, ["memory_bytes: tier mcu cannot hold its models",
                                     "split-fp32 (segments 1..6) 1,269,404 B",
                                     "split-fp32 alone does not fit"]),
        ("mcu", {"exit-fp32": {}, "exit-int8": {}, "split-int8": {}},
         ["memory_bytes: tier mcu", "exit-fp32 (segments 1..3)"]),
        ("npu", {"split-fp32": {"latency_ms": 2}},
         ["chains.split-fp32: class npu runs only full-integer INT8 models; split-fp32 is "
          "float32. Allowed chains: split-int8, exit-int8 (remove it: chains: {split-fp32: "
          "null})"]),
        ("npu", {"exit-fp32": {"latency_ms": 2, "segments": [2, 3]}},
         ["chains.exit-fp32: class npu runs only full-integer INT8 models"]),
        ("npu", {"split-int8": {}}, ["chains.split-int8.latency_ms: required (no simulator "
                                     "default for class npu, model int8)"]),
        ("edge", {"split-int4": {}}, ["chains.split-int4: unknown chain; must be one of "
                                      "split-fp32, split-int8, exit-fp32, exit-int8"]),
        ("edge", {"split-int8": {"segments": [0, 3]}},
         ["chains.split-int8.segments: must be [first, last] with 1 <= first <= last <= 6",
          "got [0, 3]"]),
        ("edge", {"split-int8": {"segments": [4, 2]}}, ["chains.split-int8.segments", "[4, 2]"]),
        ("edge", {"exit-int8": {"segments": [1, 4]}},
         ["chains.exit-int8.segments: must be [first, last] with 1 <= first <= last <= 3"]),
        ("edge", {"exit-int8": {"segments": [1]}}, ["chains.exit-int8.segments"]),
        ("edge", {"exit-int8": {"speed": 1}}, ["chains.exit-int8.speed"]),
        ("edge", {"exit-int8": {"jitter": {"dist": "normal"}}}, ["chains.exit-int8.jitter"]),
    ],
)  # fmt: skip
def test_bad_chain_config_names_the_key(tier: str, chains: dict, needles: list[str]) -> None:
    require_models()
    with pytest.raises(TierConfigError) as err:
        cfg = load_tier_config(tier, overrides={"chains": chains}, use_env=False)
        cfg.check_memory(models_dir())
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_chain_config_defaults_and_fits() -> None:
    require_models()
    cfg = load_tier_config("edge", overrides={"chains": {"split-fp32": {}, "exit-int8": {
        "jitter": {"dist": "uniform", "low_ms": 0, "high_ms": 2}}}}, use_env=False)
    assert cfg.chains["split-fp32"].latency_ms == 22.0 and cfg.chains["split-fp32"].segments \
        == [1, 6]  # fmt: skip
    assert cfg.chains["exit-int8"].latency_ms == 10.0 and cfg.chains["exit-int8"].device_time \
        == "profile"  # fmt: skip
    # an MCU holds the fp32 network's head (1..4: 81,680 B), not its 1.18 MB dense layer
    mcu = load_tier_config("mcu", overrides={"chains": {"split-fp32": {"segments": [1, 4]}}},
                           use_env=False)  # fmt: skip
    sizes = mcu.check_memory(models_dir())
    head = chain_spec("split-fp32").segments[:4]
    assert sizes["split-fp32"] == sum((models_dir() / s.file).stat().st_size for s in head)
    assert mcu.chains["split-fp32"].latency_ms == 80.0
    npu = load_tier_config("npu", overrides={"chains": {"exit-int8": {"latency_ms": 1.5}}},
                           use_env=False)  # fmt: skip
    npu.check_memory(models_dir())


def test_a_float_chain_on_an_npu_is_refused_before_it_binds() -> None:
    require_models()
    with pytest.raises(TierStartError) as err:
        start_tier("npu", config_overrides={"chains": {"split-fp32": {"latency_ms": 2}}},
                   ready_timeout_s=20.0)  # fmt: skip
    assert "chains.split-fp32: class npu runs only full-integer INT8 models" in str(err.value)


# --- the variants as ordinary models ---

VARIANTS = ("v14w8", "v14w16", "v20w16", "v28w16", "v28w32")


def _variant_entry(name: str) -> dict[str, Any]:
    return json.loads(manifest_path().read_text())["research"]["variants"][name]


@pytest.mark.slow
def test_served_variants_reproduce_the_manifest_accuracy(
    tier_factory: Callable[..., TierProcess], eval_set: dict[str, np.ndarray]
) -> None:
    """Each variant served from its file gets the 28×28 image and area-averages it to its own
    resolution: the correct answers on the evaluation set are the manifest's, to the image."""
    models = {v: {"file": _variant_entry(v)["file"].removeprefix("models/"), "latency_ms": 6.0}
              for v in VARIANTS}  # fmt: skip
    tp = tier_factory("edge", device_time="real", config_overrides={"models": models})
    with httpx.Client(base_url=tp.url, timeout=10.0) as c:
        info = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert info["v14w8"]["file"] == "variants/v14w8.tflite"
        for v in VARIANTS:
            entry = _variant_entry(v)
            for split in ("easy", "hard"):
                correct = 0
                for img, label in zip(eval_set[f"{split}_images"], eval_set[f"{split}_labels"],
                                      strict=True):  # fmt: skip
                    r = c.post(f"/v1/infer?model={v}", content=img.tobytes(), headers=BINARY)
                    correct += r.json()["prediction"] == int(label)
                assert correct == entry[f"correct_{split}"], (v, split, correct)
        # JSON bodies (0–1 floats) are resized too
        img = eval_set["easy_images"][0]
        d = c.post("/v1/infer", json={"model": "v14w8", "image": (img / 255.0).tolist()}).json()
        assert d["prediction"] == int(eval_set["easy_labels"][0])


def test_int8_only_rule_for_variant_files(tmp_path: Path) -> None:
    """The manifest's models section does not list research files: an npu node checks their
    tensors when it loads them (variants are INT8; multiscale float versions are refused)."""
    require_models()
    ok = load_tier_config("npu", overrides={"models": {"v20w16": {
        "file": "variants/v20w16.tflite", "latency_ms": 1.41}}}, use_env=False)
    ok.check_files(models_dir())
    ok.check_memory(models_dir())
    bad = load_tier_config("npu", overrides={"models": {"f16": {
        "file": "multiscale/fp32_f16.tflite", "latency_ms": 1.41}}}, use_env=False)
    with pytest.raises(TierConfigError) as err:
        bad.check_files(models_dir())
    assert "models.f16: class npu runs only full-integer INT8 models; multiscale/fp32_f16.tflite" \
           " has float32 input and float32 output" in str(err.value)  # fmt: skip
    full_int = load_tier_config("npu", overrides={"models": {"fp32i": {
        "file": "multiscale/fp32_int8.tflite", "latency_ms": 1.41}}}, use_env=False)
    full_int.check_files(models_dir())
