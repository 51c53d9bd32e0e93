"""PNG plots of a run: the simulator's two (accuracy vs deadline met, energy vs accuracy), the
latency CDF per policy and request type (every request: those without an answer keep the curve
below 1), and the route mix per policy. Every title names the experiment and the request count;
energy plots say which energy they show (the device's battery, or the whole system)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PLOT_FILES: tuple[str, ...] = (
    "accuracy_vs_deadline.png",
    "energy_vs_accuracy.png",
    "latency_cdf.png",
    "route_mix.png",
)
GROUP_PLOT = "groups.png"
MARKERS = "osD^vP*Xh<>p"


def _heading(title: str, experiment: str, records: pd.DataFrame) -> str:
    n_policies = max(1, records["policy"].nunique())
    per = len(records) // n_policies
    name = f"{experiment}: " if experiment else ""
    return f"{name}{title}\n({per} requests per policy, {n_policies} policies)"


def _policy_points(ax: plt.Axes, summary: pd.DataFrame, x: str, y: str) -> None:
    """One marker per policy, named in the legend (labels next to points overlap)."""
    for i, (_, row) in enumerate(summary.iterrows()):
        ax.scatter(row[x], row[y], s=70, marker=MARKERS[i % len(MARKERS)],
                   label=str(row["policy"]), zorder=3)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)


def _positive_log(ax: plt.Axes, values: pd.Series) -> None:
    v = values.dropna()
    if len(v) and float(v.min()) > 0 and float(v.max()) / float(v.min()) > 20:
        ax.set_xscale("log")


def plot_run(records: pd.DataFrame, summary: pd.DataFrame, out_dir: str | Path,
             title: str = "") -> list[Path]:
    """Write the four PNGs into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in PLOT_FILES]

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    _policy_points(ax, summary, "accuracy_pct", "deadline_met_pct")
    ax.set_xlabel("Accuracy (%)")
    ax.set_ylabel("Deadline met (%)")
    ax.set_title(_heading("Accuracy vs Deadline satisfaction", title, records), fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, col, label in (
        (axes[0], "device_energy_mean_mj", "Device energy per request (mJ): the battery pays"),
        (axes[1], "system_energy_mean_mj", "System energy per request (mJ): device + tiers"),
    ):
        _policy_points(ax, summary, col, "accuracy_pct")
        _positive_log(ax, summary[col])
        ax.set_xlabel(label + (", log" if ax.get_xscale() == "log" else ""), fontsize=9)
    axes[0].set_ylabel("Accuracy (%)")
    fig.suptitle(_heading("Energy vs Accuracy (emulated energy)", title, records), fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    kinds = [k for k in ("cv", "lm") if (records["type"] == k).any()] or ["cv"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = records[records["type"] == kind]
        for policy in dict.fromkeys(records["policy"]):
            rows = sub[sub["policy"] == policy]
            lat = np.sort(rows["latency_ms"].dropna().to_numpy())
            if not len(rows):
                continue
            failed = len(rows) - len(lat)
            frac = np.arange(1, len(lat) + 1) / len(rows)
            label = policy + (f" ({failed} unanswered)" if failed else "")
            if len(lat):
                ax.step(lat, frac, where="post", label=label)
            else:
                ax.plot([], [], label=label)
        if len(sub):
            lo, hi = float(sub["deadline_ms"].min()), float(sub["deadline_ms"].max())
            ax.axvspan(lo, hi, color="grey", alpha=0.12, label=f"deadlines {lo:g}-{hi:g} ms")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("Latency from intended send (ms, log)")
        ax.set_ylabel("Fraction of all requests answered by then")
        ax.set_title(f"{kind.upper()} requests", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_heading("Latency CDF per policy (unanswered requests never arrive)", title,
                          records), fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)

    mix = records.assign(route=records["route"].replace("", "none")).pivot_table(
        index="policy", columns="route", values="id", aggfunc="count", fill_value=0
    )
    mix = mix.reindex(list(dict.fromkeys(records["policy"])))
    share = mix.div(mix.sum(axis=1), axis=0) * 100.0
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    bottom = np.zeros(len(share))
    for route in share.columns:
        ax.bar(share.index, share[route].to_numpy(), bottom=bottom, label=route)
        bottom += share[route].to_numpy()
    ax.set_ylabel("Requests (%)")
    ax.set_title(_heading("Route mix per policy (route that answered, or last one sent)", title,
                          records), fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    if "group" in records and records["group"].nunique() > 1:
        paths.append(plot_groups(records, out / GROUP_PLOT, title))
    return paths


def plot_groups(records: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Deadline met (%) and p95 latency per device group, one bar per policy."""
    from orchestrator.summary import summarize_groups

    per = summarize_groups(records)
    groups = list(dict.fromkeys(per["group"]))
    policies = list(dict.fromkeys(per["policy"]))
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, col, label in ((axes[0], "deadline_met_pct", "Deadline met (%)"),
                           (axes[1], "latency_p95_ms", "p95 latency (ms, answered requests)")):
        for i, policy in enumerate(policies):
            mine = per[per["policy"] == policy].set_index("group").reindex(groups)
            ax.bar(x + (i - (len(policies) - 1) / 2) * width, mine[col].to_numpy(), width,
                   label=policy)
        ax.set_xticks(x, [f"{g}\n({int(per[per['group'] == g]['n_devices'].iloc[0])} devices)"
                          for g in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left", framealpha=0.9)
    fig.suptitle(_heading("Per device group", title, records), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
