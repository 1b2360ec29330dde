"""``lightning-nas`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-nas", description="Neural architecture search on PyTorch Lightning.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a MobileNet-like supernet (SPOS), rank subnets, export the best")
    demo.add_argument("--epochs", type=_positive, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-train", type=_positive, default=2048)
    demo.add_argument("--out", default="runs/demo", help="runs go to OUT/version_N (never overwritten)")
    demo.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from lightning_nas.demo import format_summary, run_demo

        summary = run_demo(epochs=args.epochs, seed=args.seed, out=args.out, num_train=args.num_train, progress=not args.no_progress)
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
