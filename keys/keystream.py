"""The project's only source of keyed randomness: a ChaCha20 keystream turned into integers.

Every seed is a unique HMAC output (see ``keys.derive``), so the fixed all-zero nonce never
repeats under one key. The byte-to-integer rules are part of the shard format: the same seed
must give the same permutation in every release.
"""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32
_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte block counter (0) + 12-byte nonce
_CHUNK = 512
_WORD = 1 << 32


class KeyStream:
    """Deterministic, unbiased draws from ``ChaCha20(key=seed)``."""

    __slots__ = ("_encryptor", "_buffer", "_pos")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"KeyStream seed must be {SEED_BYTES} bytes")
        self._encryptor = Cipher(algorithms.ChaCha20(bytes(seed), _NONCE), mode=None).encryptor()
        self._buffer = b""
        self._pos = 0

    def __repr__(self) -> str:
        return "KeyStream(<keyed>)"

    def __reduce__(self):  # a stream mid-way cannot be rebuilt without its seed; say so
        raise TypeError("KeyStream cannot be pickled; send the seed's source (DatasetKey) instead")

    def _take(self, count: int) -> bytes:
        """Next ``count`` keystream bytes, in order."""
        if self._pos + count > len(self._buffer):
            rest = self._buffer[self._pos:]
            fresh = self._encryptor.update(bytes(max(_CHUNK, count)))
            self._buffer, self._pos = rest + fresh, 0
        out = self._buffer[self._pos:self._pos + count]
        self._pos += count
        return out

    def read(self, count: int) -> bytes:
        """The next ``count`` raw keystream bytes, for callers that draw many values at once
        (research transforms turning them into arrays); the same stream the draws below read."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"read needs a count >= 0, got {count!r}")
        return self._take(count)

    def _bits(self, k: int) -> int:
        """A uniform integer in ``[0, 2**k)`` from the next ``ceil(k/8)`` bytes (big-endian)."""
        nbytes = (k + 7) // 8
        return int.from_bytes(self._take(nbytes), "big") >> (8 * nbytes - k)

    def randbelow(self, n: int) -> int:
        """A uniform integer in ``[0, n)``: draw ``bit_length(n-1)`` bits, reject values >= n."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"randbelow needs a positive integer, got {n!r}")
        k = (n - 1).bit_length()
        if k == 0:
            return 0
        while True:
            r = self._bits(k)
            if r < n:
                return r

    def randbelow_many(self, n: int, count: int) -> list[int]:
        """``count`` draws of ``randbelow(n)``: the same values from the same stream position.

        For n a power of two up to 256 every draw is one byte, never rejected, so the bytes
        are read at once (the per-tile turns of the ``-orient`` modes: 8 choices per tile).
        """
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"randbelow_many needs a count >= 0, got {count!r}")
        if isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 256 and n & (n - 1) == 0:
            shift = 8 - (n - 1).bit_length()
            return [b >> shift for b in self._take(count)]
        return [self.randbelow(n) for _ in range(count)]

    def uniform(self) -> float:
        """A float in ``[0, 1)`` with 53 random bits (every double of the form m/2**53)."""
        return (int.from_bytes(self._take(8), "big") >> 11) * (1.0 / (1 << 53))

    def permutation(self, n: int) -> list[int]:
        """A uniform random permutation of ``range(n)`` (Fisher–Yates, from the last index down).

        The hot path of encryption (one call per image), so it reads the keystream as a batch
        of 32-bit big-endian words and picks each index by rejection: a word ``w`` is used
        only if ``w < 2**32 - 2**32 % bound`` and then ``j = w % bound``, which is exactly
        uniform.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"permutation needs a non-negative integer, got {n!r}")
        if n >= _WORD:
            raise ValueError(f"permutation of {n} items is larger than this stream supports")
        perm = list(range(n))
        if n < 2:
            return perm
        # The first batch holds a word for every swap. A word is rejected only if it is at
        # least 2**32 - (i + 1) (odds under n / 2**32), so when none is that large every
        # index is w % (i + 1) at once and the loop below never runs.
        words: tuple[int, ...] = struct.unpack(f">{max(n - 1, 16)}I", self._take(4 * max(n - 1, 16)))
        if max(words[:n - 1]) < _WORD - n:
            for i, w in zip(range(n - 1, 0, -1), words):
                j = w % (i + 1)
                perm[i], perm[j] = perm[j], perm[i]
            return perm
        pos = 0
        for i in range(n - 1, 0, -1):
            bound = i + 1
            limit = _WORD - _WORD % bound
            while True:
                if pos == len(words):
                    count = max(i, 16)
                    words = struct.unpack(f">{count}I", self._take(4 * count))
                    pos = 0
                w = words[pos]
                pos += 1
                if w < limit:
                    break
            j = w % bound
            perm[i], perm[j] = perm[j], perm[i]
        return perm
