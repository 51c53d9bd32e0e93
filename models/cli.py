"""``edgebed models ...``: evaluate (and retrain) the committed tier and research models."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="evaluate or retrain the tier models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")

    ev = msub.add_parser("eval", help="recompute the manifest's accuracies with LiteRT only")
    ev.add_argument("--check", action="store_true", help="exit 1 if any figure differs from the manifest")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--no-research", action="store_true",
                    help="only the tier models (skip segments, multi-exit, variants, multi-scale)")
    ev.add_argument("--write-timings", action="store_true",
                    help="store this host's median invoke times in the manifest's research section")
    ev.set_defaults(func=_eval)

    tr = msub.add_parser("train", help="retrain all models (needs the 'train' extra: TensorFlow)")
    tr.add_argument("--mnist", default=None, help="MNIST: folder with the four IDX .gz files, or a Keras mnist.npz (default: Keras download)")
    tr.add_argument("--out", default=None, help="output folder for models (default: the package's models/)")
    tr.add_argument("--data-out", default=None, help="output folder for the evaluation set (default: data/)")
    tr.add_argument("--seed", type=int, default=1234)
    tr.add_argument("--train-limit", type=int, default=None, help="use only this many training images (smoke tests)")
    tr.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every model's epochs (smoke tests)")
    tr.add_argument("--only", action="append", choices=["fp32", "int8", "tinycnn"],
                    help="retrain only this model (repeatable); the others' files and entries are kept")
    tr.add_argument("--eval-only", action="store_true",
                    help="keep the trained models; rebuild only the evaluation set and the manifest's figures")
    tr.set_defaults(func=_train)

    rs = msub.add_parser(
        "research", help="build the research models from the committed ones: segments, "
                         "multi-exit, variants, multi-scale (needs the 'train' extra)")
    rs.add_argument("--mnist", default=None, help="MNIST: folder with the four IDX .gz files, or a Keras mnist.npz (default: Keras download)")
    rs.add_argument("--out", default=None, help="models folder holding fp32.tflite, int8.tflite and manifest.json (default: the package's models/)")
    rs.add_argument("--data-out", default=None, help="folder holding the evaluation set (default: data/)")
    rs.add_argument("--seed", type=int, default=1234)
    rs.add_argument("--train-limit", type=int, default=None, help="use only this many training images (smoke tests)")
    rs.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every model's epochs (smoke tests)")
    rs.add_argument("--only", action="append", choices=["segments", "multi_exit", "variants", "multiscale"],
                    help="build only this part (repeatable); the others' files and entries are kept")
    rs.set_defaults(func=_research)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _eval(args: argparse.Namespace) -> int:
    from models.evaluate import main as eval_main

    return eval_main(check=args.check, as_json=args.json, research=not args.no_research,
                     write_timings=args.write_timings)


def _train(args: argparse.Namespace) -> int:
    from models.training.pipeline import main as train_main

    return train_main(args)


def _research(args: argparse.Namespace) -> int:
    from models.training.research import main as research_main

    return research_main(args)
