"""The ``triphase`` command line.

::

    triphase init DIR                                           copy the book template into DIR
    triphase check [CONFIG]                                     preflight: dataset, subjects, checkpoints
    triphase run [CONFIG] [--force NOTEBOOK ...] [--no-build]   train, execute notebooks, build the book
    triphase train [--config default]                           train the model organism only
    triphase notebook NAME [-p KEY VALUE ...]                   re-run one notebook with other parameters
    triphase build                                              build the book from executed notebooks
    triphase models                                             list checkpoint series presets
    triphase fetch model SERIES [--checkpoints ...]             download hub checkpoints (needs internet)
    triphase fetch lebel2023 --subjects UTS03 [--stories ...]   download LeBel et al. 2023 (needs internet)
    triphase home                                               print the data home

Every command takes ``--quiet`` (warnings and errors only, no progress bars) and
``--home DIR`` (the data home, as ``TRIPHASE_HOME``), before or after its name.
Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from triphase import __version__

#: the logger every library message goes through; the command line configures it
LOGGER = "triphase"
#: marks the handler main() installs, so a second main() in one process replaces it
_HANDLER_FLAG = "_triphase_cli"
#: errors reported as one line (exit 2) instead of a traceback
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, RuntimeError)


def _parse_value(text: str):
    """Command-line values are YAML: ``3`` -> int, ``[1, 2]`` -> list, ``none`` -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot read {text!r} as a YAML value: {' '.join(str(exc).split())}") from None


def _configure_logging(quiet: bool) -> None:
    """``triphase`` log records go to stderr as plain lines: INFO and up, WARNING and up with --quiet."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _cmd_init(args) -> int:
    # subcommand imports are deferred so that `triphase --help` and `--version` stay instant
    from triphase.runs.template import init_book

    print(init_book(args.directory))
    return 0


def _cmd_check(args) -> int:
    # deferred: see _cmd_init
    from triphase.runs.config import load_run_config
    from triphase.runs.preflight import preflight
    from triphase.runs.template import book_root  # deferred (fast --help)

    cfg = load_run_config(args.config)
    result = preflight(cfg)
    print(f"run configuration {cfg.source}: {', '.join(cfg.series_names())} x {cfg.dataset} "
          f"{', '.join(cfg.subjects)}; {len(cfg.notebooks)} notebook(s); book {book_root()}")
    print(result.report())
    for problem in result.problems:
        print(f"triphase check: {problem}", file=sys.stderr)
    return 0 if result.ok else 2


def _cmd_run(args) -> int:
    # deferred: see _cmd_init
    from triphase.runs.runner import run
    from triphase.runs.template import book_root

    log = logging.getLogger(LOGGER)
    started = time.perf_counter()
    report = run(args.config, force=args.force or (), build=not args.no_build, progress=not args.quiet)
    log.info("%s", report.summary())
    log.info("total %.1f s", time.perf_counter() - started)
    if not args.no_build:
        log.info("book: %s", book_root() / "_build" / "html" / "index.html")
    return 0


def _cmd_train(args) -> int:
    # deferred: see _cmd_init
    from triphase.models.organism import run_info, train_organism

    path = train_organism(args.config, progress=not args.quiet, stop_at_step=args.stop_at_step, device=args.device)
    print(path)
    if args.stop_at_step is None:
        info = run_info(args.config)
        print(f"final held-out loss {info['final_heldout_loss']:.3f} nats/token; "
              f"unigram entropy {info['unigram_entropy_nats']:.3f} nats/token; "
              f"{len(info['checkpoints'])} checkpoints")
    return 0


def _cmd_notebook(args) -> int:
    # deferred: see _cmd_init
    from triphase.runs.config import load_run_config
    from triphase.runs.runner import DEFAULT_SCOPE, NOTEBOOK_SCOPE, ONCE_FOLDER, SYNTHESIS_FOLDER, execute_notebook
    from triphase.runs.template import book_root  # deferred (fast --help)

    cfg = load_run_config(args.config)
    params = {key: _parse_value(value) for key, value in (args.param or [])}
    root = book_root()
    series = args.series or cfg.series_names()[0]
    subject = args.subject or cfg.subjects[0]
    scope = NOTEBOOK_SCOPE.get(args.name, DEFAULT_SCOPE)
    folder = {"series": series, "synthesis": SYNTHESIS_FOLDER, "once": ONCE_FOLDER}.get(
        scope, f"{series}/{cfg.dataset}-{subject}")
    if scope in ("series", DEFAULT_SCOPE):
        params.setdefault("series", series)
    if scope == DEFAULT_SCOPE:
        params.setdefault("subject", subject)
    output = root / (args.output or cfg.output) / folder / f"{args.name}.ipynb"
    execute_notebook(args.name, params, output, force=True, root=root, title_suffix=folder.replace("/", ", "),
                     progress=not args.quiet)
    print(output)
    return 0


def _cmd_build(args) -> int:
    # deferred: see _cmd_init
    from triphase.runs.runner import build_book

    print(build_book() / "index.html")
    return 0


def _cmd_models(args) -> int:
    # deferred: see _cmd_init
    from triphase.models.series import models_table

    print(models_table().to_string(index=False))
    return 0


def _cmd_fetch(args) -> int:
    # deferred: see _cmd_init
    from triphase.runs import fetch

    if args.what == "model":
        fetch.fetch_model(args.target, checkpoints=args.checkpoints or "all")
    else:
        fetch.fetch_lebel2023(subjects=args.subjects, stories=args.stories, root=args.root)
    return 0


def _cmd_home(args) -> int:
    # deferred: see _cmd_init
    from triphase._home import data_home

    print(data_home())
    return 0


def _shared_flags(top: bool) -> argparse.ArgumentParser:
    """--quiet and --home, for the top parser and (without defaults, so they never reset it) every subcommand."""
    flags = argparse.ArgumentParser(add_help=False)
    unset = {} if top else {"default": argparse.SUPPRESS}
    flags.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only, no progress bars",
                       **({"default": False} if top else unset))
    flags.add_argument("--home", metavar="DIR", help="data home for this command (sets TRIPHASE_HOME)",
                       **({"default": None} if top else unset))
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triphase", description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_shared_flags(top=True)])
    parser.add_argument("--version", action="version", version=f"triphase {__version__}")
    shared = _shared_flags(top=False)
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[shared], **kw)  # noqa: E731

    p = add("init", help="copy the book template (notebooks, _toc.yml, run.yaml) into a new folder")
    p.add_argument("directory", metavar="DIR", help="folder to create (must not hold a book yet)")
    p.set_defaults(func=_cmd_init)

    p = add("check", help="preflight a run: dataset files and subjects, checkpoints (offline)")
    p.add_argument("config", nargs="?", default="default", help="run preset (default, tiny) or YAML file")
    p.set_defaults(func=_cmd_check)

    p = add("run", help="train what is missing, execute the notebooks, build the book")
    p.add_argument("config", nargs="?", default="default", help="run preset (default, tiny) or YAML file")
    p.add_argument("--force", nargs="*", metavar="NOTEBOOK", help="re-execute these notebooks ('all' for every one)")
    p.add_argument("--no-build", action="store_true", help="execute notebooks but do not build the book")
    p.set_defaults(func=_cmd_run)

    p = add("train", help="train (or resume) the model organism")
    p.add_argument("--config", default="default", help="organism preset (default, tiny, gpu, ...)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (auto: cuda when available)")
    p.add_argument("--stop-at-step", type=int, default=None, help="stop after this checkpoint step (resumable)")
    p.set_defaults(func=_cmd_train)

    p = add("notebook", help="re-run one notebook with other parameters")
    p.add_argument("name", help="notebook stem, e.g. 01_brain_alignment")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter as YAML, e.g. -p layers '[2, 3]'")
    p.add_argument("--config", default="default", help="run preset or YAML giving series/dataset/subject")
    p.add_argument("--series")
    p.add_argument("--subject")
    p.add_argument("--output", help="output folder relative to the book root (default book/executed)")
    p.set_defaults(func=_cmd_notebook)

    p = add("build", help="build the book (no execution)")
    p.set_defaults(func=_cmd_build)

    p = add("models", help="list checkpoint series presets")
    p.set_defaults(func=_cmd_models)

    p = add("fetch", help="download real-tier data (needs internet)")
    p.add_argument("what", choices=["model", "lebel2023"])
    p.add_argument("target", nargs="?", help="series name for 'model'")
    p.add_argument("--checkpoints", nargs="*")
    p.add_argument("--subjects", nargs="*", default=["UTS03"])
    p.add_argument("--stories", nargs="*")
    p.add_argument("--root", help="dataset folder (default: <data home>/datasets/ds003020)")
    p.set_defaults(func=_cmd_fetch)

    p = add("home", help="print the data home")
    p.set_defaults(func=_cmd_home)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    if args.home:
        os.environ["TRIPHASE_HOME"] = str(Path(args.home).expanduser().resolve())
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"triphase {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
