"""medvl3d.models: model families (vision-language, segmentation), their configs and the registry."""

from medvl3d.models import avfusion as _avfusion  # noqa: F401  (registers the avfusion family)
from medvl3d.models.clip import TextTower, VLModel, build_image_encoder
from medvl3d.models.config import (
    MonaiSegConfig,
    ResEncConfig,
    SegConfig,
    TextTowerConfig,
    VisionConfig,
    ViTConfig,
    VLConfig,
    model_config_from_dict,
    vision_config,
)
from medvl3d.models.heads import projection_head
from medvl3d.models.knowledge_bank import KnowledgeBank
from medvl3d.models.malenia import MaleniaConfig, MaleniaModel  # registers the "malenia" family
from medvl3d.models.registry import (
    Family,
    create_model,
    family_of,
    get_family,
    list_models,
    model_config,
    model_from_config,
    register_family,
    register_model,
)
from medvl3d.models.resenc3d import ResidualEncoder3D
from medvl3d.models.vit3d import VisionTransformer3D

__all__ = [
    "Family",
    "KnowledgeBank",
    "MaleniaConfig",
    "MaleniaModel",
    "MonaiSegConfig",
    "ResEncConfig",
    "ResidualEncoder3D",
    "SegConfig",
    "TextTower",
    "TextTowerConfig",
    "VLConfig",
    "VLModel",
    "ViTConfig",
    "VisionConfig",
    "VisionTransformer3D",
    "build_image_encoder",
    "create_model",
    "family_of",
    "get_family",
    "list_models",
    "model_config",
    "model_config_from_dict",
    "model_from_config",
    "projection_head",
    "register_family",
    "register_model",
    "vision_config",
]
