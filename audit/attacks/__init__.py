"""Attacks on the ciphers, used to measure privacy rather than assume it.

Each attack takes only what an ML engineer holds (the stored images, the cipher's public
parameters) and returns its best reconstruction, scored by `audit.metrics`.
"""
from __future__ import annotations

from audit.attacks.jigsaw import has_subsampled_chroma, reconstruct, solve_jigsaw

__all__ = ["has_subsampled_chroma", "reconstruct", "solve_jigsaw"]
