"""lcssm: score matching and score-based diffusion models with LCSS.

LCSS is local curvature smoothing with Stein's identity (Osada, Shing, Nishide, NeurIPS 2024).
"""

__version__ = "0.1.0"
