"""`_info.json`: the release described the way timm's webdataset reader looks for it.

`timm.data.create_dataset("wds/NAME", root=OUT, split="train")` finds a split by name only in
`OUT/_info.json` (timm/data/readers/reader_wds.py): per split its `name`, `num_samples`,
`filenames` and `shard_lengths`. timm joins each filename to the root as it is (no brace
expansion), so every shard is listed; after a forget the names are not contiguous anyway.

The file says nothing the manifest does not: the job builds it from the manifest, the
manifest signs its sha256 (`info_sha256`), and `audit-shards verify` rebuilds it and compares,
so a stray or edited `_info.json` is caught like a stray or edited shard.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

INFO_NAME = "_info.json"


def release_info(manifest) -> dict[str, Any]:
    """The `_info.json` content for a manifest (its splits, counts and class names if shown)."""
    info: dict[str, Any] = {
        "name": manifest.dataset_id,
        "num_classes": manifest.num_classes,
        "splits": {
            split: {
                "name": split,
                "num_samples": sum(e.samples for e in entries),
                "filenames": [e.name for e in entries],
                "shard_lengths": [e.samples for e in entries],
            }
            for split, entries in manifest.splits.items()
        },
    }
    if manifest.class_names is not None:
        info["class_names"] = list(manifest.class_names)
    return info


def info_bytes(manifest) -> bytes:
    """The exact bytes the job writes (sorted keys, so the same manifest gives the same file)."""
    text = json.dumps(release_info(manifest), sort_keys=True, indent=2, ensure_ascii=True)
    return (text + "\n").encode("ascii")


def info_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def info_problems(data: bytes, manifest) -> list[str]:
    """Why `data` is not the `_info.json` the manifest signs (empty: it is)."""
    if manifest.info_sha256 is None:
        return [f"{INFO_NAME}: not part of the release (the manifest signs no {INFO_NAME})"]
    if info_sha256(data) != manifest.info_sha256:
        return [f"{INFO_NAME}: sha256 {info_sha256(data)[:16]}... differs from the manifest's "
                f"{manifest.info_sha256[:16]}..."]
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return [f"{INFO_NAME}: not valid JSON"]
    if parsed != release_info(manifest):
        return [f"{INFO_NAME}: does not describe the manifest's splits, shards and counts"]
    return []
