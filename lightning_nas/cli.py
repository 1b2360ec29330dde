"""``lightning-nas`` command line: ``demo`` (the BINAS pipeline) and ``profile`` (a latency table, no training)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from lightning_nas.profile_cli import non_negative_int, positive_int

__all__ = ["main"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    from lightning_nas import profile_cli, search_cli

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
    demo.add_argument("--out", default=None, help="runs go to OUT/version_N (never overwritten; default runs/demo)")
    demo.add_argument("--no-progress", action="store_true")
    profile = profile_cli.add_arguments(commands.add_parser("profile", help="build a latency/FLOPs/params table on this device without training"))
    search = search_cli.add_arguments(commands.add_parser("search", help="black-box search on a tabular benchmark (NB201 CSV), resumable"))
    args = parser.parse_args(argv)

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
             "target_fractions": tuple(args.targets) if args.targets is not None else None, "estimator": args.estimator}
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
