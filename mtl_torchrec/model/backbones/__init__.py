"""Multi-task backbones, one file each, registered in :data:`BACKBONES` by ``model.backbone`` name.

Each file holds the backbone's options dataclass (its ``model.<section>`` config section), its
builder and its template layers. Adding a backbone is one new file plus one import line below;
``ModelConfig`` gets its options section from the registry.
"""

from mtl_torchrec.model.backbones.base import BACKBONES, Backbone, MLPConfig, option_sections

# One line per backbone file: importing it registers its backbones.
from mtl_torchrec.model.backbones.mmoe import MMoEBackbone, MMoEConfig, OMoEBackbone
from mtl_torchrec.model.backbones.ple import PLEBackbone, PLEConfig
from mtl_torchrec.model.backbones.shared_bottom import SharedBottomBackbone, SharedBottomConfig
from mtl_torchrec.model.backbones.single_task import SingleTaskBackbone, SingleTaskConfig

__all__ = [
    "BACKBONES",
    "Backbone",
    "MLPConfig",
    "MMoEBackbone",
    "MMoEConfig",
    "OMoEBackbone",
    "PLEBackbone",
    "PLEConfig",
    "SharedBottomBackbone",
    "SharedBottomConfig",
    "SingleTaskBackbone",
    "SingleTaskConfig",
    "option_sections",
]

