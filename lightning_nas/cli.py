"""``lightning-nas`` command line.

* ``fit`` / ``validate`` / ``test`` / ``predict``: Lightning's ``LightningCLI`` over a named supernet
  and an image DataModule, every callback from YAML (:mod:`lightning_nas.lightning_cli`);
* ``select``: the best subnet under resource limits from saved tables (:mod:`lightning_nas.select_cli`);
* ``export``: a picked subnet of a checkpoint as a torch.export / TorchScript / ONNX file
  (:mod:`lightning_nas.export_cli`);
* ``demo`` (the BINAS pipeline), ``profile`` (a latency table, no training), ``search`` (black-box
  search on a tabular benchmark).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from lightning_nas.profile_cli import non_negative_int, positive_int

__all__ = ["LIGHTNING_SUBCOMMANDS", "main"]

#: Subcommands served by Lightning's LightningCLI (see lightning_nas.lightning_cli).
LIGHTNING_SUBCOMMANDS = {
    "fit": "train a supernet with NAS callbacks from a YAML config (LightningCLI: --config, --print_config, --trainer.*)",
    "validate": "validate a model (LightningCLI)",
    "test": "test a model (LightningCLI)",
    "predict": "predict with a model (LightningCLI)",
}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-nas`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from lightning_nas import profile_cli, search_cli
    from lightning_nas.seeding import reproducible_blas

    reproducible_blas()  # before any arithmetic: a seed then repeats a run bit for bit on the same number of threads

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in LIGHTNING_SUBCOMMANDS:
        # LightningCLI parses these itself (--config, --print_config, --trainer.*, --model.*, --data.*).
        from lightning_nas.lightning_cli import run_lightning_cli

        # From the shell LightningCLI reads sys.argv itself (given both, it warns).
        run_lightning_cli(None if argv is None else arguments)
        return 0
    parser = argparse.ArgumentParser(prog="lightning-nas", description="Neural architecture search on PyTorch Lightning.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="BINAS end to end: train a supernet, estimate, profile, solve 3 latency targets, export")
    # Defaults None: run_demo's own defaults apply to what the user does not give (one place for them).
    demo.add_argument("--dataset", default=None,
                      help="'augmented_digits' (default, offline), 'digits' (offline), a Hugging Face dataset name, a saved "
                           "dataset or an image folder")
    demo.add_argument("--split", default=None, help="split of --dataset to use (then divided 60/20/20)")
    demo.add_argument("--epochs", type=positive_int, default=None, help="supernet training epochs (default 5)")
    demo.add_argument("--finetune-epochs", type=positive_int, default=None, help="fine-tuning epochs per pick (default 1)")
    demo.add_argument("--seed", type=non_negative_int, default=None, help="seeds everything (default 0)")
    demo.add_argument("--image-size", type=positive_int, default=None, help="input side in pixels (default 16)")
    demo.add_argument("--max-examples", type=positive_int, default=None,
                      help="use at most this many examples (original images for augmented_digits)")
    demo.add_argument("--targets", type=_fraction, nargs="+", default=None,
                      help="latency targets as quantiles of random subnets' predicted latency (default 0.2 0.5 0.8)")
    demo.add_argument("--estimator", choices=["log_error", "means"], default=None,
                      help="accuracy table: the log-error fit with adaptive allocation (default), or BINAS's conditional means (paired, shrunk)")
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="torch threads for training (default: the cores other jobs leave free, measured at the start)")
    demo.add_argument("--out", default=None, help="runs go to OUT/version_N (never overwritten; default runs/demo)")
    demo.add_argument("--no-progress", action="store_true")
    profile = profile_cli.add_arguments(commands.add_parser("profile", help="build a latency/FLOPs/params table on this device without training"))
    search = search_cli.add_arguments(commands.add_parser("search", help="black-box search on a tabular benchmark (NB201 CSV), resumable"))
    for name, text in LIGHTNING_SUBCOMMANDS.items():  # listed in --help; LightningCLI parses them (above)
        commands.add_parser(name, help=text, add_help=False)
    from lightning_nas import export_cli, select_cli

    select = select_cli.add_arguments(commands.add_parser(
        "select", help="the best subnet under resource limits from saved accuracy/latency tables (exact MILP), with its certificate"))
    export = export_cli.add_arguments(commands.add_parser(
        "export", help="export a picked subnet of a checkpoint (torch.export, TorchScript or ONNX), checked against the supernet"))
    args = parser.parse_args(arguments)

    if args.command == "select":
        from lightning_nas.solvers import InfeasibleError

        try:
            return select_cli.run(args)
        except InfeasibleError as err:
            select.error(f"infeasible: {err}")
        except (ValueError, OSError, ImportError) as err:
            select.error(str(err))
    if args.command == "export":
        try:
            return export_cli.run(args)
        except (ValueError, OSError, ImportError, RuntimeError) as err:
            export.error(str(err))

    if args.command == "search":
        import sqlite3

        try:
            return search_cli.run(args)
        except (ValueError, KeyError, OSError) as err:
            # OSError: a directory, read-only or full --storage/--table; the message names the path.
            search.error(str(err))
        except sqlite3.Error as err:
            search.error(f"--storage {str(args.storage) if args.storage else '(default)'}: {type(err).__name__}: {err}")
    if args.command == "profile":
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return profile_cli.run(args)
        except (ValueError, OSError) as err:
            profile.error(str(err))
    from lightning_nas.demo import format_summary, run_demo

    given = {"dataset": args.dataset, "split": args.split, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
             "seed": args.seed, "out": args.out, "image_size": args.image_size, "max_examples": args.max_examples,
             "target_fractions": tuple(args.targets) if args.targets is not None else None, "estimator": args.estimator, "threads": args.threads}
    # `kill` (SIGTERM) ends the demo like Ctrl-C does, through its clean-up (no empty run directory).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        summary = run_demo(**{k: v for k, v in given.items() if v is not None}, progress=not args.no_progress)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(format_summary(summary))
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
