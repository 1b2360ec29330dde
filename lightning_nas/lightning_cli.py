"""``lightning-nas fit | validate | test | predict``: Lightning's own ``LightningCLI`` for NAS runs.

The model is an :class:`~lightning_nas.classification.ImageClassifier` (its network named by a
space or a ``package.module:factory``), the data an :class:`~lightning_nas.datamodule.ImageDataModule`
(train / held_out / val [/ test] splits), and every Trainer argument and callback comes from YAML
or the command line, as with any LightningCLI: ``--config run.yaml``, ``--print_config``,
``--trainer.max_epochs 3``, ``--model.space_kwargs '{preset: tiny}'``,
``--trainer.callbacks+=lightning_nas.callbacks.UniformSampling``. The callbacks that need held-out
data take the split's name (``held_out: held_out``), resolved from the DataModule when fitting starts.

Two values are linked from the data to the model, so they are set once: ``model.num_classes``
from ``data.num_classes`` (known once the data is loaded) and ``model.in_chans`` from
``data.channels`` (the builder gets it when it takes ``in_chans``).

Example::

    lightning-nas fit --config configs/binas_digits.yaml --trainer.max_epochs 1
    lightning-nas fit --config configs/binas_digits.yaml --print_config
    lightning-nas test --config configs/binas_digits.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_nas.classification import ImageClassifier
from lightning_nas.datamodule import ImageDataModule

__all__ = ["SUBCOMMANDS", "NASLightningCLI", "run_lightning_cli"]

#: The ``lightning-nas`` subcommands served by :class:`NASLightningCLI`.
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class NASLightningCLI(LightningCLI):
    """``LightningCLI`` over :class:`ImageClassifier` and :class:`ImageDataModule`, with ``num_classes``
    and the input channels linked from the data to the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.channels`` → ``model.in_chans`` (at parse time) and ``data.num_classes`` → ``model.num_classes``."""
        parser.link_arguments("data.channels", "model.in_chans")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def run_lightning_cli(args: Sequence[str] | None = None, **kwargs: Any) -> NASLightningCLI:
    """Run ``args`` (``["fit", "--config", "run.yaml", ...]``) through :class:`NASLightningCLI`.

    Args:
        args: the command line after ``lightning-nas`` (``None``: ``sys.argv[1:]``); the first item is
            the subcommand (``fit``, ``validate``, ``test``, ``predict``).
        kwargs: further ``LightningCLI`` keyword arguments (they override the defaults here).

    Returns:
        The CLI object (``.trainer``, ``.model``, ``.datamodule``, ``.config``).
    """
    options: dict[str, Any] = dict(
        model_class=ImageClassifier, datamodule_class=ImageDataModule, seed_everything_default=0,
        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "lightning-nas"}, args=list(args) if args is not None else None,
        run=True,
    )
    options.update(kwargs)
    return NASLightningCLI(**options)
