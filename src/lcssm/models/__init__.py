"""Score networks: toy MLPs, U-Nets of the NCSN++/DDPM++ family, NCSNv2, and named presets."""

from lcssm.models.build import build_model, count_parameters, count_preset_parameters
from lcssm.models.ncsnv2 import NCSNv2, NCSNv2Config
from lcssm.models.presets import MODEL_PRESETS, ModelPreset, get_preset, resolve_model_config
from lcssm.models.toy import EnergyMLP, ScoreMLP
from lcssm.models.unet import UNet, UNetConfig

__all__ = [
    "MODEL_PRESETS",
    "EnergyMLP",
    "ModelPreset",
    "NCSNv2",
    "NCSNv2Config",
    "ScoreMLP",
    "UNet",
    "UNetConfig",
    "build_model",
    "count_parameters",
    "count_preset_parameters",
    "get_preset",
    "resolve_model_config",
]
