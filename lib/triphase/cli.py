"""The ``triphase`` command line.

::

    triphase run [CONFIG] [--force NOTEBOOK ...] [--no-build]   train, execute notebooks, build the book
    triphase train [--config default]                           train the model organism only
    triphase notebook NAME [-p KEY VALUE ...]                   re-run one notebook with other parameters
    triphase build                                              build the book from executed notebooks
    triphase models                                             list checkpoint series presets
    triphase fetch model SERIES [--checkpoints ...]             download hub checkpoints (needs internet)
    triphase fetch lebel2023 --subjects UTS03 [--stories ...]   download LeBel et al. 2023 (needs internet)
    triphase home                                               print the data home
"""
from __future__ import annotations

import argparse
import sys
import time

import yaml


def _parse_value(text: str):
    """Command-line values are YAML: ``3`` -> int, ``[1, 2]`` -> list, ``none`` -> None."""
    return yaml.safe_load(text)


def _cmd_run(args) -> int:
    from triphase.runs.runner import run

    started = time.perf_counter()
    report = run(args.config, force=args.force or (), build=not args.no_build, progress=not args.quiet)
    print(report.summary())
    print(f"total {time.perf_counter() - started:.1f} s")
    if not args.no_build:
        from triphase.runs.template import book_root

        print(f"book: {book_root() / '_build' / 'html' / 'index.html'}")
    return 0


def _cmd_train(args) -> int:
    from triphase.models.organism import run_info, train_organism

    path = train_organism(args.config, progress=not args.quiet, stop_at_step=args.stop_at_step)
    print(path)
    if args.stop_at_step is None:
        info = run_info(args.config)
        print(f"final held-out loss {info['final_heldout_loss']:.3f} nats/token; "
              f"unigram entropy {info['unigram_entropy_nats']:.3f} nats/token; "
              f"{len(info['checkpoints'])} checkpoints")
    return 0


def _cmd_notebook(args) -> int:
    from triphase.runs.config import load_run_config
    from triphase.runs.runner import DEFAULT_SCOPE, NOTEBOOK_SCOPE, SYNTHESIS_FOLDER, execute_notebook
    from triphase.runs.template import book_root

    cfg = load_run_config(args.config)
    params = {key: _parse_value(value) for key, value in (args.param or [])}
    root = book_root()
    series = args.series or cfg.series_names()[0]
    subject = args.subject or cfg.subjects[0]
    scope = NOTEBOOK_SCOPE.get(args.name, DEFAULT_SCOPE)
    folder = {"series": series, "synthesis": SYNTHESIS_FOLDER}.get(scope, f"{series}/{cfg.dataset}-{subject}")
    if scope != "synthesis":
        params.setdefault("series", series)
    if scope == DEFAULT_SCOPE:
        params.setdefault("subject", subject)
    output = root / (args.output or cfg.output) / folder / f"{args.name}.ipynb"
    execute_notebook(args.name, params, output, force=True, root=root, title_suffix=folder.replace("/", ", "),
                     progress=not args.quiet)
    print(output)
    return 0


def _cmd_build(args) -> int:
    from triphase.runs.runner import build_book

    print(build_book() / "index.html")
    return 0


def _cmd_models(args) -> int:
    from triphase.models.series import load_presets

    try:
        from triphase.models.series import models_table

        table = models_table()
    except ImportError:
        import pandas as pd

        table = pd.DataFrame([{"name": k, "loader": v["loader"], "description": v.get("description", "")}
                              for k, v in load_presets().items()])
    print(table.to_string(index=False))
    return 0


def _cmd_fetch(args) -> int:
    from triphase.runs import fetch

    if args.what == "model":
        fetch.fetch_model(args.target, checkpoints=args.checkpoints or "all")
    else:
        fetch.fetch_lebel2023(subjects=args.subjects, stories=args.stories, root=args.root)
    return 0


def _cmd_home(args) -> int:
    from triphase._home import data_home

    print(data_home())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triphase", description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train what is missing, execute the notebooks, build the book")
    p.add_argument("config", nargs="?", default="default", help="run preset (default, tiny) or YAML file")
    p.add_argument("--force", nargs="*", metavar="NOTEBOOK", help="re-execute these notebooks ('all' for every one)")
    p.add_argument("--no-build", action="store_true", help="execute notebooks but do not build the book")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train (or resume) the model organism")
    p.add_argument("--config", default="default", help="organism preset (default, tiny)")
    p.add_argument("--stop-at-step", type=int, default=None, help="stop after this checkpoint step (resumable)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("notebook", help="re-run one notebook with other parameters")
    p.add_argument("name", help="notebook stem, e.g. 01_brain_alignment")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter as YAML, e.g. -p layers '[2, 3]'")
    p.add_argument("--config", default="default", help="run preset or YAML giving series/dataset/subject")
    p.add_argument("--series")
    p.add_argument("--subject")
    p.add_argument("--output", help="output folder relative to the book root (default book/executed)")
    p.set_defaults(func=_cmd_notebook)

    p = sub.add_parser("build", help="build the book (no execution)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("models", help="list checkpoint series presets")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("fetch", help="download real-tier data (needs internet)")
    p.add_argument("what", choices=["model", "lebel2023"])
    p.add_argument("target", nargs="?", help="series name for 'model'")
    p.add_argument("--checkpoints", nargs="*")
    p.add_argument("--subjects", nargs="*", default=["UTS03"])
    p.add_argument("--stories", nargs="*")
    p.add_argument("--root", help="dataset folder (default: <data home>/datasets/ds003020)")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("home", help="print the data home")
    p.set_defaults(func=_cmd_home)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"triphase {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
