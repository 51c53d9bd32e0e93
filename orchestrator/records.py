"""Per-request records: building one row from a request's attempts, and the incremental CSV writer.

``records.csv`` is written one flushed row at a time, so a crash or Ctrl-C loses nothing that
was already recorded. ``latency_ms`` is the time from the request's *intended* send to its
accepted answer (empty when no answer came: the request failed); ``elapsed_ms`` is always set.
``deadline_met`` is exactly ``latency_ms <= deadline_ms`` (false when there is no answer).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from orchestrator.client import Attempt
from orchestrator.energy import EnergyBreakdown
from orchestrator.workload import Request

RECORD_COLUMNS: tuple[str, ...] = (
    "id",
    "policy",
    "device",
    "group",
    "type",
    "difficulty",
    "length",
    "route",
    "node",
    "node_class",
    "path",
    "attempts",
    "n_attempts",
    "outcome",
    "correct",
    "prediction",
    "label",
    "confidence",
    "quality",
    "latency_ms",
    "accepted_latency_ms",
    "elapsed_ms",
    "network_ms",
    "compute_ms",
    "device_ms",
    "queue_ms",
    "send_lag_ms",
    "hop_ms",
    "decision",
    "tensor_bytes",
    "exit",
    "device_energy_mj",
    "system_energy_mj",
    "remote_energy_mj",
    "sim_energy_mj",
    "deadline_ms",
    "deadline_met",
    "schedule_s",
    "intended_send_s",
    "actual_send_s",
    "phase",
    "image_index",
    "tokens",
    "error",
    "attempts_json",
)


def make_record(
    *,
    request: Request,
    policy: str,
    attempts: Sequence[Attempt],
    accepted: Attempt | None,
    energy: EnergyBreakdown,
    elapsed_ms: float,
    send_lag_ms: float,
    intended_send_s: float,
    actual_send_s: float,
    schedule_s: float = math.nan,
    outcome: str | None = None,
    phase: str = "",
    paths: dict[str, str] | None = None,
    decision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of records.csv.

    ``route`` is the route that answered, else the last route actually sent (an attempt the
    budget never allowed is listed in ``attempts_json`` as ``not_sent`` but is no route);
    ``node``, ``node_class`` and ``path`` (the links crossed, ``a>b``; ``direct`` without one;
    from ``paths``: node -> path) describe that route."""
    answered = accepted is not None and accepted.ok and outcome in (None, "ok")
    sent = [a for a in attempts if a.sent]
    final = accepted if answered else (sent[-1] if sent else None)
    if outcome is None and final is None and attempts:
        outcome = attempts[-1].outcome  # nothing was sent: the budget ran out first
    if outcome is None:
        if answered:
            outcome = "ok"
        elif final is None:
            outcome = "error"
        elif final.ok:  # answered but not accepted, and the budget allowed no further route
            outcome = "abandoned"
        else:
            outcome = final.outcome
    latency_ms = elapsed_ms if answered else math.nan
    quality = accepted.quality if answered and accepted is not None else math.nan
    if not answered:
        correct = False
    elif request.kind == "cv":
        correct = accepted is not None and accepted.prediction == request.label
    else:  # emulated LM correctness: the simulator's draw, with the request's recorded draw
        correct = bool(quality > request.lm_draw)
    return {
        "id": request.id,
        "policy": policy,
        "device": request.device,
        "group": request.group,
        "type": request.kind,
        "difficulty": request.difficulty,
        "length": request.length,
        "route": final.route if final is not None else "",
        "node": final.tier if final is not None else "",
        "node_class": final.hw_class if final is not None else "",
        "path": (paths or {}).get(final.tier, "") if final is not None else "",
        "attempts": ">".join(a.route for a in sent),
        "n_attempts": len(sent),
        "outcome": outcome,
        "correct": bool(correct),
        "prediction": accepted.prediction if answered and accepted is not None else -1,
        "label": request.label,
        "confidence": accepted.confidence if answered and accepted is not None else math.nan,
        "quality": quality,
        "latency_ms": latency_ms,
        "accepted_latency_ms": accepted.latency_ms
        if answered and accepted is not None
        else math.nan,
        "elapsed_ms": elapsed_ms,
        "network_ms": sum(a.network_ms for a in attempts),
        "compute_ms": sum(a.compute_ms for a in attempts),
        "device_ms": sum(a.device_ms for a in attempts),
        "queue_ms": sum(a.queue_ms for a in attempts),
        "send_lag_ms": send_lag_ms,
        "hop_ms": "",  # filled at the end of the run from the link proxy's hop log
        "decision": ";".join(f"{k}={v}" for k, v in (decision or {}).items()),
        # tensor (or image) bytes the request's chain stages sent to nodes (their bodies)
        "tensor_bytes": sum(a.tensor_in_bytes for a in sent),
        "exit": accepted.exit if answered and accepted is not None else -1,
        "device_energy_mj": energy.device_energy_mj,
        "system_energy_mj": energy.system_energy_mj,
        "remote_energy_mj": energy.remote_energy_mj,
        "sim_energy_mj": energy.sim_energy_mj,
        "deadline_ms": request.deadline_ms,
        "deadline_met": bool(latency_ms <= request.deadline_ms),
        "schedule_s": schedule_s,
        "intended_send_s": intended_send_s,
        "actual_send_s": actual_send_s,
        "phase": phase,
        "image_index": request.image_index,
        "tokens": accepted.tokens if answered and accepted is not None else 0,
        "error": "" if answered else (final.error if final is not None
                                      else (attempts[-1].error if attempts else "")),
        "attempts_json": json.dumps([a.brief() for a in attempts], separators=(",", ":")),
    }


class RecordWriter:
    """Append rows to records.csv, flushing after each row; also keeps them in memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=list(RECORD_COLUMNS))
        self._writer.writeheader()
        self._fh.flush()
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in RECORD_COLUMNS})
        self._fh.flush()
        self.rows.append(row)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def rewrite(self) -> None:
        """Write every row again (closed writer; after rows were completed at the end of the
        run), atomically: a reader sees the old file or the new one."""
        self.close()
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(RECORD_COLUMNS))
            w.writeheader()
            for row in self.rows:
                w.writerow({k: _fmt(row.get(k)) for k in RECORD_COLUMNS})
        tmp.replace(self.path)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def records_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """In-memory rows as a DataFrame with the same dtypes ``read_records`` gives."""
    df = pd.DataFrame(list(rows), columns=list(RECORD_COLUMNS))
    return _normalise(df)


def read_records(path: str | Path) -> pd.DataFrame:
    """records.csv (or a run directory) → DataFrame."""
    p = Path(path)
    if p.is_dir():
        p = p / "records.csv"
    df = pd.read_csv(p, keep_default_na=False, na_values={"latency_ms": [""]}, dtype=str)
    return _normalise(df)


_INT_COLS = ("id", "n_attempts", "prediction", "label", "deadline_ms", "image_index", "tokens",
             "tensor_bytes", "exit")
_BOOL_COLS = ("correct", "deadline_met")
_STR_COLS = (
    "policy",
    "device",
    "group",
    "type",
    "difficulty",
    "length",
    "route",
    "node",
    "node_class",
    "path",
    "hop_ms",
    "decision",
    "attempts",
    "outcome",
    "phase",
    "error",
    "attempts_json",
)


_MISSING = {"exit": "-1", "tensor_bytes": "0"}  # columns an older records.csv lacks


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for col in RECORD_COLUMNS:
        # a column an older records.csv lacks (device, group) reads as empty
        missing = _MISSING.get(col, "")
        s = df[col] if col in df.columns else pd.Series([missing] * len(df), index=df.index)
        if col in _STR_COLS:
            out[col] = s.fillna("").astype(str)
        elif col in _BOOL_COLS:
            out[col] = s.map(lambda v: v is True or str(v) == "True").astype(bool)
        elif col in _INT_COLS:
            out[col] = pd.to_numeric(s).astype("int64")
        else:
            out[col] = pd.to_numeric(s.replace("", math.nan)).astype("float64")
    return out
