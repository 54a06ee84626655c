"""Building blocks that work on plain tensors, independent of the trainer."""

from mtl_torchrec.modules.experts import BatchedExperts
from mtl_torchrec.modules.mmoe import MMoE
from mtl_torchrec.modules.towers import TaskTower, TaskTowers

__all__ = ["BatchedExperts", "MMoE", "TaskTower", "TaskTowers"]
