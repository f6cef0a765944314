"""Peak memory of the cross-shard sample-key check for ImageNet's 1,281,167 training keys.

Compares a plain set of the job's 24-hex ids with audit.keyset.SampleKeys (sorted spill).
Run: OMP_NUM_THREADS=1 python benchmarks/keyset_memory.py
"""
import os
import time
import tracemalloc

from audit.keyset import SampleKeys

N = 1_281_167


def ids():
    for _ in range(N):
        yield os.urandom(12).hex()  # keys.derive.SAMPLE_ID_HEX = 24 lowercase hex digits


tracemalloc.start()
keys = set(ids())
current, peak = tracemalloc.get_traced_memory()
print(f"set of {N} str ids: {current / 1e6:.1f} MB held, {peak / 1e6:.1f} MB peak")
del keys
tracemalloc.stop()

tracemalloc.start()
start = time.perf_counter()
spill = SampleKeys()
for i, key in enumerate(ids()):
    spill.add(key, i // 1000)
dups = list(spill.duplicates())
current, peak = tracemalloc.get_traced_memory()
print(f"SampleKeys (sorted spill) of {N} ids: {peak / 1e6:.1f} MB peak, {time.perf_counter() - start:.1f} s, "
      f"{len(dups)} duplicates")
