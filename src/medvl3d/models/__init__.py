"""medvl3d.models: 3D image encoders, the vision-language model, the knowledge bank and the registry."""

from medvl3d.models.clip import TextTower, VLModel, build_image_encoder, model_from_config
from medvl3d.models.config import TextTowerConfig, VisionConfig, VLConfig, model_config_from_dict
from medvl3d.models.heads import projection_head
from medvl3d.models.knowledge_bank import KnowledgeBank
from medvl3d.models.registry import create_model, list_models, model_config, register_model
from medvl3d.models.resenc3d import ResidualEncoder3D
from medvl3d.models.vit3d import VisionTransformer3D

__all__ = [
    "KnowledgeBank",
    "ResidualEncoder3D",
    "TextTower",
    "TextTowerConfig",
    "VLConfig",
    "VLModel",
    "VisionConfig",
    "VisionTransformer3D",
    "build_image_encoder",
    "create_model",
    "list_models",
    "model_config",
    "model_config_from_dict",
    "model_from_config",
    "projection_head",
    "register_model",
]
