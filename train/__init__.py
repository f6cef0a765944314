"""The ML engineer's side: train vision transformers on encrypted shards.

Submodules, imported on demand so that ``import train`` stays cheap (no torch, no timm):
``train.models`` (PEViT and MI-ViT, registered with timm on import), ``train.losses``
(cross-entropy, anchor-based nearest class mean), ``train.augment`` (ciphertext-domain
augmentation), ``train.config`` (run settings, torch-free), ``train.tasks`` (classification
and detection plug-ins) and ``train.engine`` (the one engine every task runs through). Nothing here imports ``keys`` or ``encrypt``: a training install can never
decrypt.
"""
from __future__ import annotations
