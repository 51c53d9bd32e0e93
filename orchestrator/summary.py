"""Per-policy summary computed from records alone (so it can always be recomputed from records.csv).

Accuracy: ``cv_accuracy_pct`` from real predictions of CV requests; ``lm_quality_pct`` the mean
LM quality the (emulated) LM tiers reported; ``accuracy_pct`` mixes CV correctness with the LM
correctness draws, as the simulator did. A request without an answer counts as incorrect and
as a missed deadline. Latency statistics are over answered requests (``n_ok``; the latency CDF
plot shows the others). Energy: ``device_energy_mean_mj`` is what the device's battery pays,
``system_energy_mean_mj`` adds every tier's reported energy (both emulated). ``route_mix``
counts the route that answered, or the last one actually sent; ``outcomes`` counts outcomes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.records import read_records

SUMMARY_COLUMNS: tuple[str, ...] = (
    "policy",
    "n",
    "n_cv",
    "n_lm",
    "n_ok",
    "error_pct",
    "accuracy_pct",
    "cv_accuracy_pct",
    "lm_quality_pct",
    "lm_correct_pct",
    "deadline_met_pct",
    "cv_deadline_met_pct",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "cv_latency_mean_ms",
    "accepted_latency_mean_ms",
    "device_energy_mean_mj",
    "system_energy_mean_mj",
    "sim_energy_mean_mj",
    "attempts_mean",
    "escalated_pct",
    "route_mix",
    "outcomes",
)


def _pct(x: pd.Series) -> float:
    return float(x.mean() * 100.0) if len(x) else float("nan")


def _q(x: pd.Series, q: float) -> float:
    x = x.dropna()
    return float(np.percentile(x.to_numpy(), q)) if len(x) else float("nan")


def _mean(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.mean()) if len(x) else float("nan")


def route_mix(df: pd.DataFrame) -> str:
    """Share of requests per final route, e.g. ``edge/fp32=60.0%;mcu/int8=40.0%``."""
    counts = df["route"].replace("", "none").value_counts()
    total = counts.sum()
    return ";".join(f"{r}={100.0 * c / total:.1f}%" for r, c in sorted(counts.items()))


def outcome_mix(df: pd.DataFrame) -> str:
    """Requests per outcome, e.g. ``abandoned=2;ok=8``."""
    counts = df["outcome"].value_counts()
    return ";".join(f"{o}={int(c)}" for o, c in sorted(counts.items()))


def _row(df: pd.DataFrame) -> dict[str, object]:
    cv = df[df["type"] == "cv"]
    lm = df[df["type"] == "lm"]
    ok = df["outcome"] == "ok"
    return {
        "n": len(df),
        "n_cv": len(cv),
        "n_lm": len(lm),
        "n_ok": int(ok.sum()),
        "error_pct": _pct(~ok),
        "accuracy_pct": _pct(df["correct"]),
        "cv_accuracy_pct": _pct(cv["correct"]),
        "lm_quality_pct": _mean(lm["quality"]) * 100.0,
        "lm_correct_pct": _pct(lm["correct"]),
        "deadline_met_pct": _pct(df["deadline_met"]),
        "cv_deadline_met_pct": _pct(cv["deadline_met"]),
        "latency_mean_ms": _mean(df["latency_ms"]),
        "latency_p50_ms": _q(df["latency_ms"], 50),
        "latency_p95_ms": _q(df["latency_ms"], 95),
        "latency_p99_ms": _q(df["latency_ms"], 99),
        "cv_latency_mean_ms": _mean(cv["latency_ms"]),
        "accepted_latency_mean_ms": _mean(df["accepted_latency_ms"]),
        "device_energy_mean_mj": _mean(df["device_energy_mj"]),
        "system_energy_mean_mj": _mean(df["system_energy_mj"]),
        "sim_energy_mean_mj": _mean(df["sim_energy_mj"]),
        "attempts_mean": _mean(df["n_attempts"].astype(float)),
        "escalated_pct": _pct(df["n_attempts"] > 1),
        "route_mix": route_mix(df),
        "outcomes": outcome_mix(df),
    }


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per policy (in first-seen order) with the columns of ``SUMMARY_COLUMNS``."""
    rows = [{"policy": policy, **_row(records[records["policy"] == policy])}
            for policy in dict.fromkeys(records["policy"])]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


GROUP_SUMMARY_COLUMNS: tuple[str, ...] = ("policy", "group", "n_devices", *SUMMARY_COLUMNS[1:])


def summarize_groups(records: pd.DataFrame) -> pd.DataFrame:
    """One row per policy and device group (``summary_groups.csv``), the same columns as
    :func:`summarize` plus ``group`` and ``n_devices``."""
    rows = []
    for policy in dict.fromkeys(records["policy"]):
        mine = records[records["policy"] == policy]
        for group in dict.fromkeys(mine.sort_values("id", kind="stable")["group"]):
            df = mine[mine["group"] == group]
            rows.append({"policy": policy, "group": group,
                         "n_devices": int(df["device"].nunique()), **_row(df)})
    return pd.DataFrame(rows, columns=list(GROUP_SUMMARY_COLUMNS))


def summarize_csv(path: str | Path) -> pd.DataFrame:
    """Recompute the summary from a records.csv (or a run directory)."""
    return summarize(read_records(path))


def write_summary(summary: pd.DataFrame, path: str | Path) -> None:
    summary.to_csv(path, index=False, float_format="%.10g")  # significant digits, not decimals


def read_summary(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.csv"
    return pd.read_csv(p, keep_default_na=True)


SUMMARY_VIEW: tuple[str, ...] = (
    "policy",
    "n",
    "accuracy_pct",
    "cv_accuracy_pct",
    "deadline_met_pct",
    "latency_mean_ms",
    "latency_p95_ms",
    "device_energy_mean_mj",
    "system_energy_mean_mj",
    "error_pct",
    "route_mix",
)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a plain-text table (the columns a terminal has room for)."""
    view = summary.loc[:, [c for c in SUMMARY_VIEW if c in summary.columns]].rename(
        columns={"device_energy_mean_mj": "device_mJ", "system_energy_mean_mj": "system_mJ"})
    with pd.option_context(
        "display.max_columns", None, "display.width", 220, "display.max_colwidth", 60
    ):
        text = view.to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return (text + "\ndevice_mJ: what the device's battery pays; system_mJ: the device plus every "
            "tier (both emulated)")
