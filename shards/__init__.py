"""The shard contract: the only thing an ML engineer receives from a data owner.

A release is `OUT/manifest.json` (signed) plus `OUT/{split}-{index:06d}.tar` WebDataset
shards. `shards.manifest` describes and signs a release, `shards.writer` writes one shard
reproducibly, `shards.reader` reads and checks them. This package only verifies signatures;
it never holds a private key and never imports `keys` or `encrypt`.

Only the manifest names are imported here. webdataset (which imports torch when it is
installed) is imported only inside `shards.reader.webdataset_pipeline`, so the writer, the
strict reader and the manifest stay light for encryption workers and auditors.
"""
from __future__ import annotations

from shards.manifest import FORMAT_VERSION, CipherSpec, Manifest, ManifestError, ShardEntry
from shards.signing import verify_signature

__all__ = ["FORMAT_VERSION", "CipherSpec", "Manifest", "ManifestError", "ShardEntry", "verify_signature"]
