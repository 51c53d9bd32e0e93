"""Markdown tables of the research models' figures (``edgebed models eval`` prints them)."""

from __future__ import annotations

from typing import Any

RAW_IMAGE_BYTES = 784  # a 28×28 uint8 digit, what a device would otherwise send
LINK_MBIT = 1.0  # a slow link, to put the cut sizes in milliseconds


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(e: dict[str, Any]) -> str:
    return f"{e['accuracy_easy_pct']:.2f} / {e['accuracy_hard_pct']:.2f}"


def _shape(shape: list[int]) -> str:
    return "×".join(str(d) for d in shape[1:])


def cut_table(name: str, entry: dict[str, Any]) -> str:
    rows = []
    for c in entry["cuts"]:
        t = c["tensor"]
        ms = t["bytes"] * 8 / (LINK_MBIT * 1000)
        rows.append([c["after"], _shape(t["shape"]), t["dtype"], f"{t['bytes']:,}",
                     f"{t['bytes'] / RAW_IMAGE_BYTES:.2f}", f"{ms:.1f}", c["head_invoke_us"],
                     c["tail_invoke_us"], _pct(c), c["mismatches_vs_whole"]])
    return f"**{name}**\n\n" + _table(
        ["cut after", "tensor", "dtype", "bytes", "× raw image", f"ms at {LINK_MBIT:g} Mbit/s",
         "head µs", "tail µs", "head∘tail easy / hard %", "≠ whole"], rows)


def segment_table(name: str, entry: dict[str, Any]) -> str:
    rows = [[s["name"], s["file"].rsplit("/", 1)[-1], f"{s['bytes']:,}", f"{s['parameters']:,}",
             f"{s['features']['bytes']:,}" if "features" in s else
             f"{s['probabilities']['bytes']} (probabilities)", s["median_invoke_us"]]
            for s in entry["segments"]]
    return f"**{name}**\n\n" + _table(
        ["segment", "file", "file bytes", "parameters", "output bytes", "invoke µs"], rows)


def exit_tables(name: str, entry: dict[str, Any]) -> str:
    segs = entry["segments"]
    rows = [[e["exit"], "+".join(s["name"] for s in segs[: e["segments"]]),
             f"{sum(s['parameters'] for s in segs[: e['segments']]):,}", _pct(e),
             e["invoke_us_to_here"]] for e in entry["exits"]]
    pol = [[p["threshold"], _pct(p), " / ".join(f"{v:g}" for v in p["exit_share_pct"]["easy"]),
            " / ".join(f"{v:g}" for v in p["exit_share_pct"]["hard"]), p["mean_invoke_us"]]
           for p in entry["early_exit"]]
    return (f"**{name}**\n\n"
            + _table(["exit", "segments run", "parameters run", "easy / hard %", "invoke µs"], rows)
            + "\n\n"
            + _table(["exit when confidence ≥", "easy / hard %", "share at exit 1/2/3, easy %",
                      "hard %", "mean invoke µs"], pol))


def classifier_table(entries: dict[str, Any], variants: bool) -> str:
    rows = []
    for name, e in entries.items():
        row = [name]
        if variants:
            row += [_shape(e["input"]["shape"]), e["input"]["bytes"]]
        else:
            row += [", ".join(e["weight_dtypes"]), f"{e['weight_sparsity_pct']:g}"]
        row += [f"{e['parameters']:,}", f"{e['bytes']:,}"]
        if not variants:
            row.append(f"{e['run_time_bytes']:,}")
        row += [e["input"]["dtype"], e["output"]["bytes"], e["probability_vector_length"],
                _pct(e), e["median_invoke_us"], ", ".join(e["serving_classes"]) or "none"]
        if not variants:
            row.append(", ".join(e["serving_classes_run_time"]) or "none")
        rows.append(row)
    head = (["variant", "input", "input bytes"] if variants
            else ["target", "weights", "zero weights %"])
    head += ["parameters", "file bytes"]
    if not variants:
        head.append("bytes at run time")
    head += ["I/O dtype", "output bytes", "probabilities", "easy / hard %", "invoke µs",
             "classes (tier rule: file bytes)"]
    if not variants:
        head.append("classes (bytes at run time)")
    return _table(head, rows)


def research_tables(research: dict[str, Any]) -> str:
    """All tables for a ``research`` section (the manifest's, or freshly computed figures)."""
    parts = []
    for name, entry in research.get("segments", {}).items():
        parts.append(segment_table(f"segments of {name}", entry))
        parts.append(cut_table(f"cuts of {name}", entry))
    for name, entry in research.get("multi_exit", {}).items():
        if isinstance(entry, dict) and "exits" in entry:
            parts.append(exit_tables(f"multi-exit {name}", entry))
    if research.get("variants"):
        parts.append("**variants**\n\n" + classifier_table(research["variants"], True))
    if research.get("multiscale"):
        parts.append("**multi-scale (the fp32 CNN)**\n\n"
                     + classifier_table(research["multiscale"], False))
    return "\n\n".join(parts)
