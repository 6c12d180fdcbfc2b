"""Score networks: toy MLPs and image U-Nets."""

from lcssm.models.toy import EnergyMLP, ScoreMLP

__all__ = ["EnergyMLP", "ScoreMLP"]
