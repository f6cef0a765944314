"""The one table of cipher modes: what each mode does to an image, asked by every package.

Stdlib only, so every package (the contract's readers, `keys`-free trainers, auditors) can
read it. A mode's facts live in its row and nowhere else: the manifest's validator, the
encryptor, the trainer's model choice and the audit's attack choice all ask this table
instead of spelling mode names. Adding a mode is one row here, one entry in
`encrypt.ciphers.CIPHERS`, a model family and an attack that declare it; the contract test
(tests/test_mode_contract.py) fails until each piece, the demo and the docs are there.
"""
from __future__ import annotations

from dataclasses import dataclass

from shards.errors import ContractError

__all__ = ["CIPHER_MODES", "GeometryError", "MODES", "Mode", "NAMES", "mode_of"]


class GeometryError(ContractError):
    """A geometry a mode cannot have; `field` names the cipher field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field


@dataclass(frozen=True)
class Mode:
    """One cipher mode's facts. Everything else about a mode is derived from these."""

    name: str
    mixes: bool     # p×p patches averaged to s×s: stores the smaller image, needs a sub-patch
    shuffles: bool  # token tiles permuted by a keyed per-image permutation
    turns: bool     # every stored tile turned by its own keyed element of D4
    summary: str    # one line for help texts

    @property
    def encrypted(self) -> bool:
        """False for the plain baseline (`none`), which a release must flag as such."""
        return self.mixes or self.shuffles or self.turns

    @property
    def keyed(self) -> bool:
        """Whether the mode draws per-sample secrets (and so has something to decrypt)."""
        return self.shuffles or self.turns

    @property
    def keeps_positions(self) -> bool:
        """Whether tokens stay where they were, so detection boxes still point at them."""
        return not self.shuffles

    def tile(self, patch: int, sub_patch: int | None) -> int:
        """Side of one stored token tile: the patch, or the sub-patch once patches are mixed."""
        return sub_patch if self.mixes else patch

    def stored_size(self, image_size: tuple[int, int], patch: int, sub_patch: int | None) -> tuple[int, int]:
        """The stored image of this mode applied to `image_size`; GeometryError when impossible.

        The one geometry rule of the project: the manifest, the encryptor, the trainer and
        the audit all reach it (the manifest through CipherSpec, which adds type checks).
        """
        h, w = image_size
        if patch < 1:
            raise GeometryError("patch", f"must be at least 1, got {patch}")
        if h % patch or w % patch:
            raise GeometryError("image_size", f"{h}x{w} is not divisible by the patch {patch}")
        if not self.mixes:
            if sub_patch is not None:
                raise GeometryError("sub_patch", f"must be null for mode {self.name}")
            return (h, w)
        if sub_patch is None or sub_patch < 1 or sub_patch >= patch or patch % sub_patch:
            raise GeometryError("sub_patch", f"{sub_patch} must be smaller than and divide the patch {patch}")
        return (h // patch * sub_patch, w // patch * sub_patch)

    def draws(self, image_size: tuple[int, int], patch: int) -> tuple[int, int]:
        """(permutation length, tile turns) this mode draws per image; (0, 0) when keyless.

        Both count the token grid: mixing keeps one tile per patch.
        """
        tokens = (image_size[0] // patch) * (image_size[1] // patch)
        return (tokens if self.shuffles else 0, tokens if self.turns else 0)


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("shuffle", mixes=False, shuffles=True, turns=False,
         summary="p×p patches shuffled per image (the paper's RS)"),
    Mode("mix", mixes=True, shuffles=False, turns=False,
         summary="s×s sub-patches of each patch averaged, positions kept (the paper's MI)"),
    Mode("mix-shuffle", mixes=True, shuffles=True, turns=False,
         summary="mix, then the s×s tiles shuffled per image"),
    Mode("mix-shuffle-orient", mixes=True, shuffles=True, turns=True,
         summary="mix-shuffle, then each tile turned by its own keyed flip or quarter turn"),
    Mode("none", mixes=False, shuffles=False, turns=False,
         summary="plain images, for baselines only"),
)}
NAMES: tuple[str, ...] = tuple(MODES)
CIPHER_MODES: tuple[str, ...] = tuple(name for name, m in MODES.items() if m.encrypted)


def mode_of(name: object) -> Mode:
    """The row of a mode name; GeometryError("mode", ...) listing the modes otherwise."""
    if not isinstance(name, str) or name not in MODES:
        raise GeometryError("mode", f"expected one of {', '.join(NAMES)}, got {name!r:.40}")
    return MODES[name]
