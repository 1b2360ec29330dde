"""``lightning-nas export``: a picked subnet of a trained supernet as a deployable file, no Python.

Usage::

    lightning-nas export --checkpoint supernet.ckpt --arch arch.json --out subnet.pt2
    lightning-nas export --checkpoint supernet.ckpt --arch arch.json --out subnet.onnx --format onnx
    lightning-nas export --checkpoint other.ckpt --model mypackage.models:make_supernet --space-kwargs '{"width": 0.5}' \\
        --arch arch.json --out subnet.ts --format torchscript --input-size 3 32 32

The supernet is rebuilt from the checkpoint's hyper-parameters (a ``lightning-nas fit`` /
:class:`~lightning_nas.classification.ImageClassifier` checkpoint) or from ``--space`` /
``--model`` (any LightningModule's checkpoint: the supernet's weights are found under whatever
attribute holds them), its weights are loaded, and ``supernet.export(arch)`` gives the plain
subnet, which is written in one of three formats:

* ``export`` (default): ``torch.export`` program (``torch.export.load(path).module()``);
* ``torchscript``: ``torch.jit.trace`` (``torch.jit.load(path)``);
* ``onnx``: ONNX opset 17 through the TorchScript-based exporter, batch dimension dynamic (needs
  ``pip install 'lightning-nas[onnx]'``; checked in ONNX Runtime).

The input shape is ``(--batch-size, C, H, W)``: ``--input-size C H W``, else the checkpoint's
DataModule hyper-parameters (``channels``, ``image_size``). Before the file is written (atomically)
it is loaded back and its output on a random input is compared with the supernet's under the same
arch (eval mode); a difference beyond ``--tolerance`` is an error and nothing is written.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_nas.profile_cli import _json_object, positive_int

__all__ = ["FORMATS", "add_arguments", "export_subnet_file", "load_supernet_weights", "main", "run", "supernet_from_checkpoint"]

FORMATS = ("export", "torchscript", "onnx")
ONNX_OPSET = 17


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``export`` command's options to ``parser`` (a sub-parser of ``lightning-nas``)."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="Lightning checkpoint (.ckpt) of the trained supernet")
    parser.add_argument("--arch", required=True, type=Path, help="the pick: lightning-nas select's --out, or a JSON {label: value}")
    parser.add_argument("--out", required=True, type=Path, help="the exported file (written atomically)")
    parser.add_argument("--format", default="export", choices=FORMATS,
                        help="export: torch.export (.pt2, default); torchscript: torch.jit.trace; onnx: ONNX (needs lightning-nas[onnx])")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--space", help="registered space of the supernet (default: from the checkpoint's hyper-parameters)")
    which.add_argument("--model", metavar="MODULE:FACTORY", help="your own supernet factory (imports and runs your code)")
    parser.add_argument("--space-kwargs", type=_json_object, default=None,
                        help="JSON object of keyword arguments for --space / --model (default: the checkpoint's)")
    parser.add_argument("--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"), default=None,
                        help="input shape of one example (default: the checkpoint's data channels and image_size)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="batch size of the example input (traced shape)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |exported - supernet| output difference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check input")
    return parser


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"`--checkpoint` {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"`--checkpoint` {str(path)!r} is a directory; give the .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise ValueError(f"`--checkpoint` {str(path)!r} is not a readable Lightning checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"`--checkpoint` {str(path)!r} has no `state_dict`; give a Lightning checkpoint (.ckpt) of the training run")
    return dict(checkpoint)


def load_supernet_weights(supernet: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint") -> str:
    """Load the supernet's weights from a LightningModule's ``state_dict``, wherever the supernet sits in it.

    The prefix (``"supernet."``, ``"net."``, ...) is the one under which every key of
    ``supernet.state_dict()`` is found.

    Returns:
        The prefix used.

    Raises:
        ValueError: no prefix holds all the supernet's keys (another architecture or space).
    """
    wanted = supernet.state_dict()
    prefixes: dict[str, int] = {}
    for key in state_dict:
        for name in wanted:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                prefixes[key[: len(key) - len(name)]] = prefixes.get(key[: len(key) - len(name)], 0) + 1
    for prefix, _ in sorted(prefixes.items(), key=lambda item: -item[1]):
        if all(prefix + name in state_dict for name in wanted):
            supernet.load_state_dict({name: state_dict[prefix + name] for name in wanted})
            return prefix
    missing = [name for name in wanted if not any(key.endswith(name) for key in state_dict)][:5]
    raise ValueError(
        f"the {where} does not hold this supernet's weights (e.g. {missing or list(wanted)[:5]} not found under any prefix); "
        "was it trained with the same space and space_kwargs (--space / --model / --space-kwargs)?"
    )


def supernet_from_checkpoint(
    path: str | Path,
    *,
    space: str | None = None,
    model: str | None = None,
    space_kwargs: Mapping[str, Any] | None = None,
    load_weights: bool = True,
) -> nn.Module:
    """The supernet of a checkpoint: rebuilt from ``space``/``model`` or the saved hyper-parameters, weights loaded.

    Args:
        path: a Lightning ``.ckpt`` file.
        space: a registered space name to build the supernet with (as
            :func:`~lightning_nas.classification.build_network`) instead of the checkpoint's
            ``hyper_parameters`` (an :class:`~lightning_nas.classification.ImageClassifier` saves
            ``space``/``model``, ``space_kwargs``, ``num_classes`` and ``in_chans``).
        model: ``"package.module:factory"`` to build the supernet with, instead of the checkpoint's.
        space_kwargs: keyword arguments for ``space`` / ``model`` (default: the checkpoint's).
        load_weights: load the trained weights (``False``: the structure only).

    Raises:
        FileNotFoundError, IsADirectoryError: ``path`` is not a file.
        ValueError: not a checkpoint, no way to rebuild the supernet, or weights of another supernet.
    """
    from lightning_nas.classification import build_network

    path = Path(path)
    checkpoint = _read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if space is None and model is None:
        space, model = hparams.get("space"), hparams.get("model")
        if space is None and model is None:
            raise ValueError(
                f"`--checkpoint` {str(path)!r} does not say how to build its supernet (no `space`/`model` hyper-parameter: not "
                "a lightning-nas fit / ImageClassifier checkpoint); give --space or --model (and --space-kwargs)"
            )
        if space_kwargs is None:
            space_kwargs = hparams.get("space_kwargs")
    supernet = build_network(space, space_kwargs, model, num_classes=hparams.get("num_classes"), in_chans=hparams.get("in_chans"))
    if load_weights:
        load_supernet_weights(supernet, checkpoint["state_dict"], f"checkpoint {str(path)!r}")
    return supernet.eval()


def _input_size(args: argparse.Namespace, checkpoint: Mapping[str, Any]) -> tuple[int, int, int]:
    if args.input_size is not None:
        return tuple(args.input_size)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    channels = data.get("channels") or hparams.get("in_chans")
    size = data.get("image_size")
    if not isinstance(channels, int) or not isinstance(size, int):
        raise ValueError(
            f"`--input-size` is needed: the checkpoint {str(args.checkpoint)!r} does not record the data's channels and "
            "image_size (not a lightning-nas fit checkpoint); give --input-size C H W"
        )
    return channels, size, size


def _serialise(subnet: nn.Module, x: torch.Tensor, fmt: str) -> tuple[bytes, Any]:
    """The file's bytes and a callable running them (loaded back from those bytes)."""
    buffer = io.BytesIO()
    if fmt == "export":
        program = torch.export.export(subnet, (x,))
        torch.export.save(program, buffer)
        data = buffer.getvalue()
        loaded = torch.export.load(io.BytesIO(data)).module()
        return data, lambda t: loaded(t)
    if fmt == "torchscript":
        traced = torch.jit.trace(subnet, (x,), check_trace=False)
        torch.jit.save(traced, buffer)
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data))
        return data, lambda t: loaded(t)
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("`--format onnx` needs the onnx and onnxruntime packages: pip install 'lightning-nas[onnx]'") from err
    torch.onnx.export(subnet, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    data = buffer.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return data, lambda t: torch.from_numpy(session.run(None, {"x": t.numpy()})[0])


def export_subnet_file(
    supernet: nn.Module, arch: Mapping[str, Any], out: str | Path, input_size: tuple[int, int, int], *,
    fmt: str = "export", batch_size: int = 1, tolerance: float = 1e-4, seed: int = 0,
) -> dict[str, Any]:
    """Export ``supernet`` under ``arch`` to ``out`` in ``fmt``, checked against the supernet first.

    Args:
        supernet: a :class:`~lightning_nas.Supernet` with its trained weights.
        arch: the subnet ``{label: value}``.
        out: the file (written atomically, only when the check passes).
        input_size: ``(C, H, W)`` of one example.
        fmt: ``"export"``, ``"torchscript"`` or ``"onnx"``.
        batch_size: batch size of the example (and check) input ``(batch_size, C, H, W)``.
        tolerance: largest allowed absolute output difference.
        seed: seed of the random check input.

    Returns:
        ``{"out", "format", "bytes", "max_abs_diff", "input_shape", "output_shape"}``.

    Raises:
        ValueError: an unknown format, or an arch not of this supernet.
        RuntimeError: the exported file's output differs from the supernet's.
    """
    from lightning_nas.io import atomic_write_bytes, check_writable

    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {fmt!r}")
    check_writable(out, "`--out`")
    try:
        arch = supernet.space.validate(arch)
    except ValueError as err:
        raise ValueError(f"`--arch` is not an architecture of this supernet: {err}") from err
    supernet.eval()
    x = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        with supernet.activated(arch):
            reference = supernet(x)
        subnet = supernet.export(arch).eval()
        data, run = _serialise(subnet, x, fmt)
        # A fresh input for the check too: the traced graph must not only replay the example.
        y = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(seed + 1))
        with supernet.activated(arch):
            reference_y = supernet(y)
        diff = max(float((run(x) - reference).abs().max()), float((run(y) - reference_y).abs().max()))
    if not diff <= tolerance:
        raise RuntimeError(
            f"the exported {fmt} file's output differs from the supernet's under this arch by {diff:.3g} (> --tolerance "
            f"{tolerance:g}); nothing was written to {str(out)!r}"
        )
    atomic_write_bytes(out, data)
    return {"out": str(out), "format": fmt, "bytes": len(data), "max_abs_diff": diff,
            "input_shape": list(x.shape), "output_shape": list(reference.shape)}


def run(args: argparse.Namespace) -> int:
    """Export for ``args`` (see :func:`add_arguments`), print a summary; returns 0."""
    from lightning_nas.select_cli import read_arch

    if args.space_kwargs is not None and args.space is None and args.model is None:
        raise ValueError("`--space-kwargs` applies to --space or --model; without them the checkpoint's own kwargs are used")
    supernet = supernet_from_checkpoint(args.checkpoint, space=args.space, model=args.model, space_kwargs=args.space_kwargs)
    input_size = _input_size(args, _read_checkpoint(args.checkpoint))
    arch = read_arch(args.arch)
    report = export_subnet_file(supernet, arch, args.out, input_size, fmt=args.format, batch_size=args.batch_size,
                                tolerance=args.tolerance, seed=args.seed)
    subnet_params = sum(p.numel() for p in supernet.export(supernet.space.validate(arch)).parameters())
    print(
        f"exported the subnet of {args.arch} ({subnet_params:,} parameters) as {args.format} to {report['out']} "
        f"({report['bytes']:,} bytes); input {tuple(report['input_shape'])} -> output {tuple(report['output_shape'])}; "
        f"checked against the supernet: max |difference| {report['max_abs_diff']:.3g} (tolerance {args.tolerance:g})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m lightning_nas.export_cli --checkpoint ... --arch ... --out ...``."""
    parser = add_arguments(argparse.ArgumentParser(prog="lightning-nas export", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        parser.error(str(err))
    return 2


if __name__ == "__main__":
    sys.exit(main())
