"""Tables and plots of the multi-stage policies (split, early exit, variant parallelism).

Written beside a run's summary when its records carry decisions (``decision``: ``cut=3``,
``threshold=0.9;local_stop=2;exit=1``, ``variants=4;answered=3``): ``research.csv`` (one row per
policy, device group, difficulty and scenario phase) and the plots of docs/research.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

RESEARCH_CSV = "research.csv"
PLOTS = {"split": "split.png", "exit": "early_exit.png", "variants": "variants.png"}


def decisions(records: pd.DataFrame) -> pd.DataFrame:
    """The ``decision`` column as one column per key (strings; missing keys empty)."""
    parsed = [dict(kv.split("=", 1) for kv in d.split(";") if "=" in kv)
              for d in records["decision"].astype(str)]
    return pd.DataFrame(parsed, index=records.index).fillna("")


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s.replace("", np.nan), errors="coerce")


def research_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per policy × group × difficulty × phase: requests, accuracy, latency, device energy,
    tensor bytes, and the decisions' mix (cuts, exits, variants answering)."""
    dec = decisions(records)
    df = records.join(dec.add_prefix("d_"))
    rows = []
    keys = ["policy", "group", "difficulty", "phase"]
    for key, g in df.groupby(keys, sort=False):
        ok = g["outcome"] == "ok"
        lat = g.loc[ok, "latency_ms"]
        row = dict(zip(keys, key, strict=True))
        row.update(
            n=len(g),
            answered=int(ok.sum()),
            accuracy_pct=100.0 * float(g["correct"].mean()),
            mean_latency_ms=float(lat.mean()) if len(lat) else np.nan,
            p95_latency_ms=float(lat.quantile(0.95)) if len(lat) else np.nan,
            deadline_met_pct=100.0 * float(g["deadline_met"].mean()),
            device_energy_mj=float(g["device_energy_mj"].mean()),
            tensor_bytes=float(g["tensor_bytes"].mean()),
        )
        if "d_cut" in g:
            cuts = _num(g["d_cut"]).dropna().astype(int)
            row["cut"] = int(cuts.mode().iloc[0]) if len(cuts) else -1
            row["cuts"] = " ".join(f"{c}:{n}" for c, n in cuts.value_counts().sort_index().items())
        exits = g.loc[ok & (g["exit"] > 0), "exit"]
        if len(exits) and "d_threshold" in g:  # early exits (a split chain ends at its last)
            row["exits"] = " ".join(f"{e}:{100.0 * n / ok.sum():.1f}%"
                                    for e, n in exits.value_counts().sort_index().items())
        if "d_escalated" in g:
            row["escalated_pct"] = 100.0 * float((g["d_escalated"] != "").mean())
        if "d_answered" in g:
            row["variants_answered_mean"] = float(_num(g["d_answered"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def format_research(records: pd.DataFrame) -> str:
    """The decisions of a run in one table (per policy and device group, difficulties and
    phases together; per phase too when the run had a scenario): what the demo prints."""
    if records.empty or not records["decision"].astype(str).ne("").any():
        return ""
    keys = ["policy", "group"] + (["phase"] if records["phase"].astype(str).ne("").any() else [])
    table = research_table(records.assign(difficulty="all", phase=records["phase"]
                                          if "phase" in keys else ""))
    cols = [*keys, "n", "accuracy_pct", "mean_latency_ms", "p95_latency_ms",
            "device_energy_mj", "tensor_bytes"]
    cols += [c for c in ("cuts", "exits", "escalated_pct", "variants_answered_mean")
             if c in table]
    text = table[cols].to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return ("decisions (research.csv has them per difficulty):\n" + text
            + "\ncuts k:n = requests cut at k; exits e:share of answers; energy emulated")


def _policy_param(records: pd.DataFrame, dec: pd.DataFrame, key: str) -> pd.Series:
    return _num(dec[key]) if key in dec else pd.Series(np.nan, index=records.index)


def plot_split(records: pd.DataFrame, dec: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Mean latency and device energy per cut, one line per device group (its link rate);
    the cut ``split`` chose with ``cut: auto`` (objective latency) is marked on each line."""
    cut = _policy_param(records, dec, "cut")
    df = records.assign(cut=cut)[cut.notna()]
    if df.empty:
        return None
    fixed = df[~df["policy"].str.contains("auto")]
    auto = df[df["policy"].str.contains("auto") & df["policy"].str.contains("latency")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (group, g) in enumerate(fixed.groupby("group", sort=False)):
        ok = g[g["outcome"] == "ok"]
        lat = ok.groupby("cut")["latency_ms"].mean()
        en = g.groupby("cut")["device_energy_mj"].mean()
        color = f"C{i}"
        axes[0].plot(lat.index, lat.values, "o-", color=color, label=group)
        axes[1].plot(en.index, en.values, "o-", color=color, label=group)
        chosen = auto[auto["group"] == group]["cut"].dropna()
        if len(chosen):
            c = int(chosen.mode().iloc[0])
            if c in lat.index:
                axes[0].scatter([c], [lat[c]], s=220, facecolors="none", edgecolors=color,
                                linewidths=2, zorder=4)
    axes[0].set_ylabel("mean latency (ms)")
    axes[1].set_ylabel("device energy (mJ, emulated)")
    for ax in axes:
        ax.set_xlabel("cut (0: all on the server … n: all on the device)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="device group (link)")
    axes[0].set_title("latency per cut; circle: the cut split/auto chose", fontsize=10)
    axes[1].set_title("device energy per cut", fontsize=10)
    fig.suptitle(f"{title}: split computing vs bandwidth ({len(records)} records)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_early_exit(records: pd.DataFrame, dec: pd.DataFrame, path: Path,
                    title: str) -> Path | None:
    """Accuracy against mean latency and against device energy, one point per policy
    (threshold), per difficulty; one line per local stop (escalating policies apart from
    those answering on the device alone)."""
    thr = _policy_param(records, dec, "threshold")
    stop = _policy_param(records, dec, "local_stop")
    df = records.assign(threshold=thr, local_stop=stop)[thr.notna()]
    if df.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for j, (diff, g) in enumerate(df.groupby("difficulty", sort=True)):
        for m, (local, h) in enumerate(g.groupby("local_stop", sort=True)):
            pts = []
            for (_, t), p in h.groupby(["policy", "threshold"], sort=False):
                ok = p[p["outcome"] == "ok"]
                pts.append((t, 100.0 * p["correct"].mean(), ok["latency_ms"].mean(),
                            p["device_energy_mj"].mean()))
            pts.sort()
            label = f"{diff}, exits on the device up to {int(local)}" + (
                ", then the edge" if int(local) < int(stop.max()) else "")
            for x_i, ax in zip((2, 3), axes, strict=True):
                ax.plot([pt[x_i] for pt in pts], [pt[1] for pt in pts],
                        "o-" if m == 0 else "s--", color=f"C{j}", label=label)
                for pt in pts:
                    ax.annotate(f"{pt[0]:g}", (pt[x_i], pt[1]), fontsize=7, alpha=0.8,
                                xytext=(3, 3), textcoords="offset points")
    axes[0].set_xlabel("mean latency (ms)")
    axes[1].set_xlabel("device energy per request (mJ, emulated)")
    for ax in axes:
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: early exit, one point per threshold ({len(records)} records)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_variants(records: pd.DataFrame, dec: pd.DataFrame, path: Path,
                  title: str) -> Path | None:
    """Accuracy by the number of variants whose answer was merged, per difficulty."""
    answered = _policy_param(records, dec, "answered")
    df = records.assign(answered=answered)[answered.notna()]
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for j, (diff, g) in enumerate(df.groupby("difficulty", sort=True)):
        acc = g.groupby("answered")["correct"].agg(["mean", "size"])
        ax.plot(acc.index, 100.0 * acc["mean"], "o-", color=f"C{j}", label=diff)
        for x, (m, n) in acc.iterrows():
            ax.annotate(f"n={int(n)}", (x, 100.0 * m), fontsize=7, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xticks(sorted(int(v) for v in df["answered"].unique()))
    ax.set_xlabel("variants answering (merged)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: variant parallelism ({len(records)} records)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_research(records: pd.DataFrame, run_dir: str | Path, *, plots: bool = True,
                   title: str = "") -> list[Path]:
    """``research.csv`` and the plots that apply, when some record carries a decision."""
    if records.empty or not records["decision"].astype(str).ne("").any():
        return []
    run_dir = Path(run_dir)
    out = [run_dir / RESEARCH_CSV]
    research_table(records).to_csv(out[0], index=False, float_format="%.4f")
    if plots:
        dec = decisions(records)
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        for key, fn in (("split", plot_split), ("exit", plot_early_exit),
                        ("variants", plot_variants)):
            made = fn(records, dec, run_dir / "plots" / PLOTS[key], title)
            if made is not None:
                out.append(made)
    return out
