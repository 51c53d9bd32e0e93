"""Variant ensembles on the whole evaluation set: each variant alone, the first k of a list
merged as ``variant_parallel`` merges them (top-k answers, summed scores), and the list without
one variant (what a killed node leaves).

    python bench/bench_ensemble.py                       # the list of experiments/variants.yaml
    python bench/bench_ensemble.py --variants v28w32 v20w16 v14w8 --top-k 1 --drop v20w16

Every figure is a real LiteRT prediction served the way the tiers serve it
(``models.runtime.LiteRTModel``: the image resized to the variant's input by exact area
averaging); the merge is ``orchestrator.policies_research.VariantParallel.merge``.
"""

from __future__ import annotations

import argparse

import numpy as np

from models.catalog import variant_entry
from models.paths import eval_set_path, models_dir
from models.runtime import LiteRTModel
from orchestrator.client import Attempt
from orchestrator.policies_research import VariantParallel

DEFAULT = ["v28w32", "v28w16", "v20w16", "v14w16"]


def top_k(probs: np.ndarray, k: int) -> Attempt:
    idx = np.argsort(-probs, kind="stable")[:k]
    return Attempt(route="x/v", outcome="ok", probs=tuple(float(probs[i]) for i in idx),
                   topk=tuple(int(i) for i in idx))


def accuracy(answers: dict[str, list[Attempt]], names: list[str], labels: np.ndarray) -> float:
    """Accuracy (%) of the merged answers of ``names``."""
    preds = [VariantParallel.merge([(1.0, answers[n][i]) for n in names])[0]
             for i in range(len(labels))]
    return 100.0 * float(np.mean(np.asarray(preds) == labels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=DEFAULT)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--drop", default=DEFAULT[1], help="the variant a killed node takes away")
    args = ap.parse_args()
    data = np.load(eval_set_path())
    print(f"top-{args.top_k} answers merged by summed scores; accuracy % on the eval set")
    for split in ("easy", "hard"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        answers = {}
        for name in args.variants:
            model = LiteRTModel(models_dir() / variant_entry(name)["file"].removeprefix("models/"))
            answers[name] = [top_k(model.probabilities(img)[0], args.top_k) for img in images]

        alone = {n: accuracy(answers, [n], labels) for n in args.variants}
        firsts = [accuracy(answers, args.variants[:k], labels)
                  for k in range(1, len(args.variants) + 1)]
        rest = [n for n in args.variants if n != args.drop]
        print(f"{split} ({len(labels)} images)")
        print("  alone:        " + ", ".join(f"{n} {a:.2f}" for n, a in alone.items()))
        print("  first k:      " + ", ".join(f"k={k} {a:.2f}" for k, a in enumerate(firsts, 1)))
        print(f"  without {args.drop}: {accuracy(answers, rest, labels):.2f} (all {len(args.variants)}: "
              f"{firsts[-1]:.2f}); best alone {max(alone.values()):.2f}")


if __name__ == "__main__":
    main()
