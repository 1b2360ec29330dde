"""Mutable modules: decisions, candidate operations, elastic layers, export and calibration."""

from lightning_nas.nn.attention import ElasticMultiheadAttention, MultiheadSelfAttention
from lightning_nas.nn.calibration import recalibrate_batch_norm
from lightning_nas.nn.choice import ArchContext, Choice, Mutable
from lightning_nas.nn.conv import ElasticConv2d
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.embedding import ElasticEmbedding, ElasticPositionalEmbedding, PositionalEmbedding
from lightning_nas.nn.export import export_subnet
from lightning_nas.nn.grouped_norm import GroupedBatchNorm2d, grouped_batch_norm
from lightning_nas.nn.input_choice import InputChoice
from lightning_nas.nn.linear import ElasticLinear
from lightning_nas.nn.mlp import ElasticMLP
from lightning_nas.nn.mutate import Replacement, mutate
from lightning_nas.nn.norm import ElasticBatchNorm2d, ElasticLayerNorm, elastic_batch_norms
from lightning_nas.nn.norm_act import ElasticBatchNormAct2d
from lightning_nas.nn import rules
from lightning_nas.nn.rules import elastic_kernel
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.nn.skip_choice import SkipChoice
from lightning_nas.nn.static import FixedValue, SumInputs
from lightning_nas.nn.transformer import ElasticTransformerBlock, ElasticTransformerEncoder, TransformerBlock, TransformerEncoder
from lightning_nas.nn import transformer_rules
from lightning_nas.nn.transformer_rules import ElasticLayers, SlicedModule

__all__ = [
    "ArchContext",
    "Choice",
    "DepthChoice",
    "ElasticBatchNorm2d",
    "ElasticBatchNormAct2d",
    "ElasticConv2d",
    "ElasticEmbedding",
    "ElasticLayerNorm",
    "ElasticLayers",
    "ElasticLinear",
    "ElasticMLP",
    "ElasticMultiheadAttention",
    "ElasticPositionalEmbedding",
    "ElasticTransformerBlock",
    "ElasticTransformerEncoder",
    "FixedValue",
    "GroupedBatchNorm2d",
    "InputChoice",
    "MultiheadSelfAttention",
    "Mutable",
    "OpChoice",
    "PositionalEmbedding",
    "Replacement",
    "SkipChoice",
    "SlicedModule",
    "SumInputs",
    "TransformerBlock",
    "TransformerEncoder",
    "elastic_batch_norms",
    "elastic_kernel",
    "export_subnet",
    "grouped_batch_norm",
    "mutate",
    "recalibrate_batch_norm",
    "rules",
    "transformer_rules",
]
