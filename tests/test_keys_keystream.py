"""KeyStream: the ChaCha20 stream behind every keyed permutation — exact, reproducible, unbiased."""
from __future__ import annotations

import ast
import hashlib
import itertools
import pickle
import sys
from collections import Counter
from pathlib import Path

import pytest
from scipy import stats

from keys.keystream import KeyStream

KEYS_DIR = Path(__file__).resolve().parents[1] / "keys"


def test_matches_the_rfc7539_chacha20_test_vector():
    # RFC 7539 appendix A.1, test vector 1: all-zero key and nonce, block counter 0.
    stream = KeyStream(bytes(32))
    assert stream.randbelow(2**32) == 0x76B8E0AD
    assert stream.randbelow(2**32) == 0xA0F13D90
    assert KeyStream(bytes(32)).uniform() == (0x76B8E0ADA0F13D90 >> 11) / 2**53


def test_same_seed_same_draws_other_seed_other_draws():
    seed, other = bytes(range(32)), bytes(range(1, 33))
    a, b, c = KeyStream(seed), KeyStream(seed), KeyStream(other)
    draws_a = [a.randbelow(1000) for _ in range(200)] + a.permutation(196)
    draws_b = [b.randbelow(1000) for _ in range(200)] + b.permutation(196)
    draws_c = [c.randbelow(1000) for _ in range(200)] + c.permutation(196)
    assert draws_a == draws_b
    assert draws_a != draws_c


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(33), "x" * 32])
def test_seed_must_be_32_bytes(seed):
    with pytest.raises(ValueError, match="32 bytes"):
        KeyStream(seed)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 16, 49, 196, 784, 3136])
def test_every_permutation_is_a_permutation(n):
    for i in range(5):
        perm = KeyStream(bytes([i]) * 32).permutation(n)
        assert sorted(perm) == list(range(n))


def test_permutations_of_four_are_uniform_over_all_24_orders():
    stream = KeyStream(b"\x42" * 32)
    draws = 24_000
    counts = Counter(tuple(stream.permutation(4)) for _ in range(draws))
    assert set(counts) == set(itertools.permutations(range(4)))
    result = stats.chisquare([counts[p] for p in itertools.permutations(range(4))])
    assert result.pvalue > 0.001, counts


def test_permutations_from_many_seeds_are_uniform_and_unbiased_per_position():
    # One permutation per seed, as the encryption job draws them (one seed per sample).
    perms = [KeyStream(hashlib.sha256(i.to_bytes(4, "big")).digest()).permutation(4)
             for i in range(12_000)]
    counts = Counter(map(tuple, perms))
    assert stats.chisquare([counts[p] for p in itertools.permutations(range(4))]).pvalue > 0.001
    for position in range(4):
        per_value = Counter(p[position] for p in perms)
        assert stats.chisquare([per_value[v] for v in range(4)]).pvalue > 0.001


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 100, 257, 2**16 + 1, 2**32 + 1, 2**70])
def test_randbelow_stays_in_range(n):
    stream = KeyStream(n.to_bytes(16, "big") * 2)
    values = [stream.randbelow(n) for _ in range(500)]
    assert all(0 <= v < n for v in values)
    if n > 1000:
        assert len(set(values)) > 490  # a wide range is actually used


@pytest.mark.parametrize("n", [10, 257])  # 257 = 2**8 + 1: the worst case for rejection sampling
def test_randbelow_is_uniform(n):
    stream = KeyStream(b"\x07" * 32)
    counts = Counter(stream.randbelow(n) for _ in range(n * 400))
    assert stats.chisquare([counts[v] for v in range(n)]).pvalue > 0.001


@pytest.mark.parametrize("n", [1, 2, 5, 8, 256, 257])
def test_randbelow_many_draws_what_randbelow_draws(n):
    one, batch = KeyStream(b"\x42" * 32), KeyStream(b"\x42" * 32)
    expected = [one.randbelow(n) for _ in range(300)]
    assert batch.randbelow_many(n, 100) + batch.randbelow_many(n, 200) == expected
    assert batch.randbelow(1000) == one.randbelow(1000)  # and leaves the stream where randbelow would


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_randbelow_rejects_non_positive_or_non_int(n):
    with pytest.raises(ValueError):
        KeyStream(bytes(32)).randbelow(n)


def test_uniform_is_in_unit_interval_and_uniform():
    stream = KeyStream(b"\x99" * 32)
    values = [stream.uniform() for _ in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert stats.kstest(values, "uniform").pvalue > 0.001


def test_stream_never_shows_or_pickles_its_seed():
    seed = bytes.fromhex("ab" * 32)
    stream = KeyStream(seed)
    assert "ab" * 4 not in repr(stream)
    with pytest.raises(TypeError):
        pickle.dumps(stream)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_keys_never_imports_random_or_numpy_and_only_allowed_packages():
    modules = sorted(KEYS_DIR.glob("*.py"))
    assert {m.name for m in modules} >= {"keystream.py", "derive.py", "keystore.py", "custody.py"}
    for module in modules:
        imported = _imports(module)
        assert not imported & {"random", "numpy"}, (module.name, imported)
        # shards: only its stdlib-level error root, CLI plumbing and utilities
        # (shards.errors, shards.console, shards.common; tests/test_layering.py pins which)
        allowed = {"cryptography", "keys", "shards"} | ({"click"} if module.name == "cli.py" else set())
        third_party = {name for name in imported if name not in sys.stdlib_module_names}
        assert third_party <= allowed, (module.name, third_party)


def _documented_permutation(stream: KeyStream, n: int) -> list[int]:
    """The rule the shard format fixes, written out one word at a time: Fisher–Yates from the
    last index down, 32-bit big-endian words read in batches of max(i, 16), a word w used only
    if w < 2**32 - 2**32 % (i + 1), then j = w % (i + 1)."""
    perm, words, pos = list(range(n)), [], 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        while True:
            if pos == len(words):
                count = max(i, 16)
                raw = stream._take(4 * count)
                words = [int.from_bytes(raw[4 * k:4 * k + 4], "big") for k in range(count)]
                pos = 0
            w, pos = words[pos], pos + 1
            if w < 2**32 - 2**32 % bound:
                break
        j = w % bound
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class _FirstWordRejected(KeyStream):
    """A stream whose first word is 0xFFFFFFFF: rejected for every bound but a power of two."""

    __slots__ = ("_forced",)

    def _take(self, count: int) -> bytes:
        out = super()._take(count)
        if not getattr(self, "_forced", False):
            self._forced = True
            out = b"\xff\xff\xff\xff" + out[4:]
        return out


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 49, 196, 197, 784])
def test_permutation_follows_the_documented_rule_word_for_word(n):
    """The batched fast path and the rejection path both give the documented permutation, and
    leave the stream at the same position (the next draw agrees too)."""
    for stream_type in (KeyStream, _FirstWordRejected):
        for s in range(20):
            seed = hashlib.sha256(b"permutation rule %d" % s).digest()
            fast, slow = stream_type(seed), stream_type(seed)
            assert fast.permutation(n) == _documented_permutation(slow, n)
            assert fast.randbelow(1000) == slow.randbelow(1000)


def test_read_gives_the_stream_the_draws_read():
    """`read` hands out the same keystream bytes the integer draws consume, in order."""
    seed = hashlib.sha256(b"read").digest()
    raw, drawn = KeyStream(seed), KeyStream(seed)
    assert int.from_bytes(raw.read(4), "big") == drawn.randbelow(2**32)
    assert raw.read(0) == b""
    assert raw.permutation(49) == drawn.permutation(49)
    with pytest.raises(ValueError):
        raw.read(-1)
