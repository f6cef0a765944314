"""Reference-based positional encoding (RPE) for token sets whose order is secret.

Shuffled shards carry no usable patch position, so an absolute position embedding would
only learn noise. RPE replaces it with a per-token function of the token's own content
measured against a learnable reference vector ``r``:

    tokens = x + sigmoid(W2 · relu(W1 · (x − r)))

It acts on each token independently, so it commutes with any permutation of the tokens;
a transformer without position embedding stays permutation-equivariant and its class token
permutation-invariant.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import PatchEmbed, trunc_normal_


class ReferencePositionalEncoding(nn.Module):
    """``x + sigmoid(W2·relu(W1·(x − r)))`` applied token by token (last dimension).

    ``W1`` has no bias: ``W1·(x − r)`` with a bias would make ``r`` redundant.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden_dim = hidden_dim or dim
        self.reference = nn.Parameter(torch.zeros(dim, **dd))
        self.fc1 = nn.Linear(dim, hidden_dim, bias=False, **dd)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)
        trunc_normal_(self.reference, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.fc2(self.act(self.fc1(x - self.reference))))


class RPEPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` followed by RPE on the patch tokens (the class token never sees it).

    Any input whose sides are multiples of the patch size is accepted: with no position
    embedding the token grid carries no meaning, so ``img_size`` only sets the default.
    """

    def __init__(self, *args, strict_img_size: bool = False, rpe_hidden_dim: int | None = None,
                 **kwargs) -> None:
        super().__init__(*args, strict_img_size=strict_img_size, **kwargs)
        self.rpe = ReferencePositionalEncoding(self.proj.out_channels, rpe_hidden_dim,
                                               device=kwargs.get("device"), dtype=kwargs.get("dtype"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rpe(super().forward(x))
