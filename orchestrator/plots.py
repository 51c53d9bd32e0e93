"""PNG plots of a run: the simulator's two (accuracy vs deadline met, energy vs accuracy), a
latency CDF per policy and the route mix per policy."""

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


def _scatter(
    summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str, path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for _, row in summary.iterrows():
        ax.scatter(row[x], row[y], s=60)
        ax.annotate(
            str(row["policy"]),
            (row[x], row[y]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(records: pd.DataFrame, summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the four PNGs into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in PLOT_FILES]
    _scatter(
        summary,
        "accuracy_pct",
        "deadline_met_pct",
        "Accuracy (%)",
        "Deadline met (%)",
        "Accuracy vs Deadline satisfaction",
        paths[0],
    )
    _scatter(
        summary,
        "energy_mean_mj",
        "accuracy_pct",
        "Mean energy per request (mJ, emulated)",
        "Accuracy (%)",
        "Energy vs Accuracy",
        paths[1],
    )

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy in dict.fromkeys(records["policy"]):
        lat = np.sort(records.loc[records["policy"] == policy, "latency_ms"].dropna().to_numpy())
        if len(lat):
            ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label=policy)
    ax.set_xscale("log")
    ax.set_xlabel("Latency from intended send (ms, log)")
    ax.set_ylabel("Fraction of answered requests")
    ax.set_title("Latency CDF per policy")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)

    mix = records.assign(route=records["route"].replace("", "none")).pivot_table(
        index="policy", columns="route", values="id", aggfunc="count", fill_value=0
    )
    mix = mix.reindex(list(dict.fromkeys(records["policy"])))
    share = mix.div(mix.sum(axis=1), axis=0) * 100.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(share))
    for route in share.columns:
        ax.bar(share.index, share[route].to_numpy(), bottom=bottom, label=route)
        bottom += share[route].to_numpy()
    ax.set_ylabel("Requests (%)")
    ax.set_title("Route mix per policy (final route)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    return paths
