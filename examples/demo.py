"""End-to-end demo on the real Fashion-MNIST sample the repo ships.

A data owner's day, in one run: create a keystore (demo passphrase, temporary folder), run
`encrypt-dataset imagefolder` once per cipher of the mode table (shards.modes: every mode
but the plain `none`) over examples/fashion-mnist-sample (Ray, two workers), verify every
release as an auditor would (signature against the exported identity, shard digests, custody
chain), re-encrypt and decrypt a few samples with the key to prove the round trip, then
print a summary table and write OUT/preview.png: plain next to each cipher.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shards.modes import CIPHER_MODES as MODES  # noqa: E402  (a new mode is demoed without edits)

SAMPLE = REPO / "examples" / "fashion-mnist-sample"
GEOMETRY = dict(patch=4, sub_patch=2, size=32)  # 28 px items resized to 32: an 8×8 token grid


def run(cmd: list[str], env: dict) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo: {' '.join(cmd[:2])} failed:\n{done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo-out")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    from encrypt.ciphers import cipher_of, mix, release_keys
    from encrypt.decode import decode_image
    from encrypt.geometry import resize_center_crop
    from keys.custody import verify_chain
    from keys.keystore import open_keystore
    from shards.reader import iter_samples, load_manifest, verify_shards

    bin_dir = Path(sys.executable).parent
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="patchveil-demo-"))
    keystore = work / "keystore"
    env = dict(os.environ, PATCHVEIL_PASSPHRASE="demo passphrase, never use it for real data",
               PATCHVEIL_KEYSTORE=str(keystore))
    run([str(bin_dir / "dataset-keys"), "init"], env)
    identity = out / "identity.json"
    run([str(bin_dir / "dataset-keys"), "export-public", "-o", str(identity)], env)
    public = json.loads(identity.read_text())

    rows, specs = [], {}
    for mode in MODES:
        release = out / f"release-{mode}"
        t0 = time.perf_counter()
        run([str(bin_dir / "encrypt-dataset"), "imagefolder", str(SAMPLE), str(release),
             "--mode", mode, "--patch", "4", "--sub-patch", "2", "--size", "32", "--resize", "32",
             "--grayscale", "--format", "png", "--shard-samples", "500",
             "--dataset-id", f"fashion-mnist-demo-{mode}", "--num-cpus", str(args.num_cpus), "--quiet"], env)
        seconds = time.perf_counter() - t0
        manifest = load_manifest(release, public_key=_public_key_bytes(public))
        problems = verify_shards(release, manifest)
        rows.append((mode, sum(manifest.samples(s) for s in manifest.splits), len(problems),
                     "x".join(map(str, manifest.cipher.stored_size)), seconds,
                     sum(e.bytes for es in manifest.splits.values() for e in es)))
        if problems:
            sys.exit(f"demo: release {mode} failed verification: {problems[0]}")
        specs[mode] = manifest.cipher

    chain = verify_chain(keystore / "custody.log", public)
    if not chain.ok:
        sys.exit(f"demo: custody log failed verification: {chain.problems[0]}")

    # The key holder's side: decrypt samples and compare with the plain pipeline, pixel for pixel.
    store = open_keystore(keystore, env["PATCHVEIL_PASSPHRASE"].encode())
    paths = [sorted(d.glob("*.png"))[0] for d in sorted((SAMPLE / "val").iterdir()) if d.is_dir()]
    plain = {}
    for mode in MODES:
        dk = release_keys(store, load_manifest(out / f"release-{mode}"))  # the release's own keys
        for p in paths:
            plain[(mode, dk.sample_id(p.relative_to(SAMPLE).as_posix()))] = p
    tiles = {p: {} for p in paths}
    exact = checked = 0
    for mode in MODES:
        dk = release_keys(store, load_manifest(out / f"release-{mode}"))
        for sample in iter_samples(out / f"release-{mode}", "val"):
            path = plain.get((mode, sample.key))
            if path is None:
                continue
            reference = resize_center_crop(decode_image(path, channels=1), 32, 32)
            tiles[path][mode] = sample.image
            spec = specs[mode]
            cipher = cipher_of(mode)
            secrets = cipher.secrets(dk, "val", sample.key, spec)
            stored = cipher.encrypt(reference, secrets, spec.patch, spec.sub_patch)
            same = np.array_equal(stored, sample.image)
            if cipher.decrypt is not None:  # the key holder's way back gives the mixed or plain image
                back = cipher.decrypt(sample.image, secrets, spec.patch, spec.sub_patch)
                same &= np.array_equal(back, mix(reference, spec.patch, spec.sub_patch) if cipher.mode.mixes
                                       else reference)
            exact += int(same)
            checked += 1
            tiles[path]["plain"] = reference
    _preview(tiles, out / "preview.png")

    print(f"\n{'mode':<20} {'samples':>8} {'stored':>7} {'MB':>6} {'seconds':>8}  verify")
    for mode, samples, problems, stored, seconds, nbytes in rows:
        print(f"{mode:<20} {samples:>8} {stored:>7} {nbytes / 1e6:>6.2f} {seconds:>8.1f}  "
              f"{'ok' if problems == 0 else 'FAILED'}")
    print(f"\ncustody log: {len(chain.entries)} entries, chain ok")
    print(f"key holder re-encrypted and decrypted {exact}/{checked} samples exactly (every mode)")
    print(f"preview: {out / 'preview.png'}  (columns: plain | {' | '.join(MODES)})")
    shutil.rmtree(work)


def _public_key_bytes(identity: dict) -> bytes:
    import base64

    return base64.b64decode(identity["public_key"])


def _preview(tiles: dict, path: Path, scale: int = 4) -> None:
    """A grid: one row per image, columns plain | each mode, upscaled."""
    cell = 32 * scale
    rows = [t for t in tiles.values() if len(t) == 1 + len(MODES)]
    canvas = Image.new("L", ((1 + len(MODES)) * (cell + 4), len(rows) * (cell + 4)), 255)
    for r, row in enumerate(rows):
        for c, name in enumerate(("plain",) + MODES):
            img = Image.fromarray(np.squeeze(row[name], -1) if row[name].ndim == 3 else row[name])
            canvas.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (c * (cell + 4), r * (cell + 4)))
    canvas.save(path)


if __name__ == "__main__":
    main()
