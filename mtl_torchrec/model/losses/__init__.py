"""Task losses, one file each, registered in :data:`LOSSES` by ``model.tasks[i].loss`` name.

Each file holds the loss class (which label kinds it accepts, its per-row value) and its options
dataclass (``model.tasks[i].loss_options``). Adding a loss is one new file plus one import line below.
"""

from mtl_torchrec.model.losses.base import LOSSES, NoOptions, TaskLoss, build_loss, loss_name, loss_problems

# One line per loss file: importing it registers its loss.
from mtl_torchrec.model.losses.bce import BCELoss, aitm_calibrator, impression_bce, with_aitm_calibrator
from mtl_torchrec.model.losses.focal import FocalLoss, FocalOptions
from mtl_torchrec.model.losses.huber import HuberLoss, HuberOptions
from mtl_torchrec.model.losses.mse import MSELoss

__all__ = [
    "BCELoss",
    "FocalLoss",
    "FocalOptions",
    "HuberLoss",
    "HuberOptions",
    "LOSSES",
    "MSELoss",
    "NoOptions",
    "TaskLoss",
    "aitm_calibrator",
    "build_loss",
    "impression_bce",
    "loss_name",
    "loss_problems",
    "with_aitm_calibrator",
]
