"""Building blocks that work on plain tensors, independent of the trainer."""

from mtl_torchrec.modules.experts import BatchedExperts, ExpertTrace, GateInfo
from mtl_torchrec.modules.mlp import ACTIVATIONS, NORMS, MLPOptions, make_mlp
from mtl_torchrec.modules.mmoe import MMoE
from mtl_torchrec.modules.ple import PLE, CGCLevel
from mtl_torchrec.modules.shared_bottom import SeparateBottoms, SharedBottom
from mtl_torchrec.modules.target_attention import HistoryAttentionFeature, TargetAttention, recent_padded
from mtl_torchrec.modules.towers import TaskTower, TaskTowers

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "MLPOptions",
    "make_mlp",
    "BatchedExperts",
    "CGCLevel",
    "ExpertTrace",
    "GateInfo",
    "HistoryAttentionFeature",
    "MMoE",
    "PLE",
    "SeparateBottoms",
    "SharedBottom",
    "TargetAttention",
    "TaskTower",
    "TaskTowers",
    "recent_padded",
]
