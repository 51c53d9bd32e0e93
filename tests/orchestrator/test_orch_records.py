"""Records and summary: CSV round trip, recomputing the summary, deadline_met semantics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.client import Attempt
from orchestrator.energy import make_energy_model
from orchestrator.records import RECORD_COLUMNS, RecordWriter, make_record, read_records
from orchestrator.summary import SUMMARY_COLUMNS, read_summary, summarize, write_summary
from orchestrator.workload import Request


def _row(
    i: int,
    policy: str,
    outcome: str,
    latency_ms: float,
    deadline_ms: int,
    pred: int,
    kind: str = "cv",
) -> dict:
    if kind == "cv":
        req = Request(
            id=i, kind="cv", deadline_ms=deadline_ms, difficulty="easy", label=7, image=bytes(784)
        )
        a = Attempt(
            route="edge/fp32",
            outcome=outcome,
            latency_ms=latency_ms,
            prediction=pred,
            confidence=0.9,
            remote_energy_mj=1.0,
            bytes_tx=900,
            bytes_rx=700,
        )
    else:
        req = Request(
            id=i,
            kind="lm",
            deadline_ms=deadline_ms,
            length="short",
            prompt="p",
            max_tokens=32,
            lm_draw=0.5,
        )
        a = Attempt(
            route="cloud/llm",
            outcome=outcome,
            latency_ms=latency_ms,
            quality=0.9,
            confidence=0.87,
            remote_energy_mj=3.0,
        )
    energy = make_energy_model("device").account([a], a)
    return make_record(
        request=req,
        policy=policy,
        attempts=[a],
        accepted=a,
        energy=energy,
        elapsed_ms=latency_ms,
        send_lag_ms=0.1,
        intended_send_s=i * 0.1,
        actual_send_s=i * 0.1 + 1e-4,
    )


def test_failed_request_has_no_latency_and_misses_its_deadline() -> None:
    row = _row(0, "p", "refused", 0.5, 100, -1)
    assert row["outcome"] == "refused" and math.isnan(row["latency_ms"])
    assert row["elapsed_ms"] == 0.5 and row["deadline_met"] is False and row["correct"] is False
    ok = _row(1, "p", "ok", 50.0, 100, 7)
    assert ok["deadline_met"] is True and ok["correct"] is True
    late = _row(2, "p", "ok", 150.0, 100, 3)
    assert late["deadline_met"] is False and late["correct"] is False
    lm = _row(3, "p", "ok", 1600.0, 5000, -1, kind="lm")
    assert lm["correct"] is True  # quality 0.9 > draw 0.5


def test_csv_round_trip_and_recomputed_summary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    rows = []
    for policy in ("a", "b"):
        for i in range(50):
            outcome = "ok" if rng.random() > 0.1 else "abandoned"
            kind = "lm" if rng.random() < 0.2 else "cv"
            rows.append(
                _row(
                    i,
                    policy,
                    outcome,
                    float(rng.uniform(1, 200)),
                    int(rng.integers(20, 121)),
                    int(rng.integers(0, 10)),
                    kind,
                )
            )
    with RecordWriter(tmp_path / "records.csv") as w:
        for r in rows:
            w.write(r)
    df = read_records(tmp_path)
    assert list(df.columns) == list(RECORD_COLUMNS) and len(df) == 100
    assert (df["deadline_met"] == (df["latency_ms"] <= df["deadline_ms"])).all()
    summary = summarize(pd.DataFrame(rows, columns=list(RECORD_COLUMNS)))
    write_summary(summary, tmp_path / "summary.csv")
    recomputed = summarize(df)
    on_disk = read_summary(tmp_path)
    assert list(on_disk.columns) == list(SUMMARY_COLUMNS)
    pd.testing.assert_frame_equal(recomputed, summary, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(
        on_disk, recomputed, check_exact=False, rtol=1e-5, check_dtype=False
    )
    # spot-check against a hand computation
    a = [r for r in rows if r["policy"] == "a"]
    expected_acc = 100 * np.mean([r["correct"] for r in a])
    assert summary.loc[0, "accuracy_pct"] == pytest.approx(expected_acc)
    lat = [r["latency_ms"] for r in a if r["outcome"] == "ok"]
    assert summary.loc[0, "latency_p95_ms"] == pytest.approx(np.percentile(lat, 95))
    assert summary.loc[0, "n"] == 50


def test_rows_are_flushed_as_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = RecordWriter(tmp_path / "records.csv")
    w.write(_row(0, "p", "ok", 10.0, 50, 7))
    # another reader sees the row before the writer is closed (crash-safe)
    assert len(read_records(tmp_path)) == 1
    w.write(_row(1, "p", "abandoned", 10.0, 50, 7))
    assert len(read_records(tmp_path)) == 2
    w.close()


def _req(i: int = 0) -> Request:
    return Request(id=i, kind="cv", deadline_ms=100, difficulty="hard", label=7, image=bytes(784))


def test_routes_never_sent_are_not_the_route() -> None:
    """Issue 11 defect 4: a request whose budget ran out before its escalation was listed under
    the route it never sent (cloud/fp32). The route is the last one actually sent."""
    first = Attempt(route="mcu/int8", outcome="ok", latency_ms=30.0, prediction=7,
                    confidence=0.5)
    unsent = Attempt(route="cloud/fp32", outcome="not_sent",
                     error="request budget spent before this attempt")
    row = make_record(request=_req(), policy="confidence", attempts=[first, unsent],
                      accepted=unsent, energy=make_energy_model("device").account([first], None),
                      elapsed_ms=2000.0, send_lag_ms=0.0, intended_send_s=0.0, actual_send_s=0.0)
    assert row["route"] == "mcu/int8", row["route"]
    assert row["attempts"] == "mcu/int8" and row["n_attempts"] == 1
    assert row["outcome"] == "abandoned" and math.isnan(row["latency_ms"])
    assert "cloud/fp32" in row["attempts_json"]  # the unsent attempt stays visible as such
    summary = summarize(pd.DataFrame([row], columns=list(RECORD_COLUMNS)))
    assert "cloud" not in summary.loc[0, "route_mix"], summary.loc[0, "route_mix"]
    assert summary.loc[0, "outcomes"] == "abandoned=1"


def test_nothing_sent_has_no_route() -> None:
    unsent = Attempt(route="cloud/fp32", outcome="not_sent", error="budget")
    row = make_record(request=_req(), policy="p", attempts=[unsent], accepted=unsent,
                      energy=make_energy_model("device").account([unsent], None),
                      elapsed_ms=5.0, send_lag_ms=0.0, intended_send_s=0.0, actual_send_s=0.0)
    assert row["route"] == "" and row["outcome"] == "not_sent" and row["n_attempts"] == 0
    assert row["device_energy_mj"] == 0.0


def test_device_and_system_energy_are_separate_columns() -> None:
    """Issue 11 defect 5: the headline energy mixed the cloud's energy into the device's."""
    cloud = Attempt(route="cloud/fp32", outcome="ok", latency_ms=90.0, prediction=7,
                    confidence=0.9, remote_energy_mj=5000.0, bytes_tx=900, bytes_rx=700)
    row = make_record(request=_req(), policy="always_cloud", attempts=[cloud], accepted=cloud,
                      energy=make_energy_model("device").account([cloud], cloud),
                      elapsed_ms=90.0, send_lag_ms=0.0, intended_send_s=0.0, actual_send_s=0.0)
    assert "energy_mj" not in row
    assert row["device_energy_mj"] < 100, row["device_energy_mj"]  # radio only
    assert row["system_energy_mj"] == pytest.approx(row["device_energy_mj"] + 5000.0)
    s = summarize(pd.DataFrame([row], columns=list(RECORD_COLUMNS)))
    assert s.loc[0, "device_energy_mean_mj"] == pytest.approx(row["device_energy_mj"])
    assert s.loc[0, "system_energy_mean_mj"] == pytest.approx(row["system_energy_mj"])
