"""Training as ML engineers do, on real Fashion-MNIST releases: start from pretrained weights,
extend a finished run, read the logs with the ecosystem's tools, predict on new plain images
and export a plain timm checkpoint.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

import train.models  # noqa: F401  (registers pevit_*, mivit_*, d4vit_*)
from releases import make_keystore, make_release, read_samples, write_imagefolder
from shards.manifest import CipherSpec
from train.checkpoint import CheckpointError, load_checkpoint
from train.cli import cli
from train.engine import RunError, TrainConfig, lr_schedule, train
from train.initialise import init_from
from train.predict import Predictor, export_checkpoint, key_needed, keyless_mix

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
PLAIN = dict(TINY, patch_size=4, img_size=32)  # a plain timm ViT with the runs' widths


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "fmnist"
    write_imagefolder(root, {"train": 256, "val": 64})
    return root


@pytest.fixture(scope="module")
def releases(tmp_path_factory, keystore, source) -> dict[str, Path]:
    out = {}
    for mode, sub in (("shuffle", None), ("mix", 2)):
        out[mode] = tmp_path_factory.mktemp("rel") / mode
        make_release(out[mode], keystore, source, mode, sub_patch=sub, shard_samples=64)
    return out


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory) -> dict[str, Path]:
    """A plain timm ViT's state dict (RGB, 1000 classes) saved as timm checkpoints are."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **PLAIN)
    folder = tmp_path_factory.mktemp("weights")
    save_file(model.state_dict(), str(folder / "vit.safetensors"))
    torch.save({"state_dict": model.state_dict()}, folder / "vit.pth")  # timm train.py's layout
    return {"safetensors": folder / "vit.safetensors", "pth": folder / "vit.pth"}


def config(release: Path, out: Path, **kw) -> TrainConfig:
    base = dict(shards=str(release), out=str(out), model_kwargs=TINY, epochs=1, batch_size=32, lr=3e-3,
                warmup_epochs=0, workers=0, log_every=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def records(run: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


@pytest.fixture(scope="module")
def shuffle_run(releases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "shuffle"
    train(config(releases["shuffle"], out))
    return out


@pytest.fixture(scope="module")
def mix_run(releases, tmp_path_factory, plain_weights) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mix"
    train(config(releases["mix"], out, init_from=str(plain_weights["safetensors"])))
    return out


# -- 1. --init-from ----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_plain_timm_vit_starts_a_shuffle_run(releases, plain_weights, tmp_path, caplog, fmt):
    """PEViT takes every block; position embedding and the 1000-class head are left out, RGB
    kernel summed to grey, RPE and the 10-class head are new; one summary line, details logged."""
    caplog.set_level(logging.INFO, logger="train")
    summary = train(config(releases["shuffle"], tmp_path / "run", init_from=str(plain_weights[fmt])))
    assert summary["step"] == 256 // 32
    [init] = records(tmp_path / "run", "init")
    assert init["loaded"] == 27  # cls token, 2 blocks × 12, final norm × 2
    assert sorted(init["converted"]) == ["patch_embed.proj.bias", "patch_embed.proj.weight"]
    assert "3→1 channels" in init["converted"]["patch_embed.proj.weight"]
    assert sorted(init["skipped"]) == ["head.bias", "head.weight", "pos_embed"]
    assert sorted(init["fresh"]) == ["head.bias", "head.weight", "patch_embed.rpe.fc1.weight",
                                     "patch_embed.rpe.fc2.bias", "patch_embed.rpe.fc2.weight",
                                     "patch_embed.rpe.reference"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init from")]
    assert len(lines) == 1 and "27 tensors loaded, 2 converted, 3 skipped" in lines[0]


def test_the_converted_mi_embedding_is_the_plain_one_on_images_with_identical_sub_patches():
    """Exact identity: MI-ViT (converted) on a mixed tile m = the plain ViT on the image whose
    k² sub-patches of every patch all equal m's tile (the least-norm preimage of m)."""
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **PLAIN).eval()
    mi = timm.create_model("mivit_tiny_patch4_32", num_classes=10, in_chans=1, mi_hidden_dim=64, **TINY).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        torch.save(plain.state_dict(), Path(folder) / "plain.pth")
        cipher = CipherSpec.for_image("mix", 4, 2, (32, 32), "png", None, 1)
        report = init_from(mi, Path(folder) / "plain.pth", cipher)
    assert (len(report.loaded), len(report.converted), len(report.skipped), report.fresh) == (30, 4, 0, [])
    m = torch.rand(4, 1, 16, 16)
    repeated = m.reshape(4, 1, 8, 1, 2, 8, 1, 2).expand(4, 1, 8, 2, 2, 8, 2, 2).reshape(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(mi.patch_embed(m), plain.patch_embed(repeated), atol=1e-5)
        assert torch.allclose(mi(m), plain(repeated), atol=1e-5)  # same grid: every later tensor loaded


def test_a_position_embedding_of_another_grid_is_resampled(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **dict(PLAIN, img_size=64))
    torch.save(source.state_dict(), tmp_path / "big.pth")
    target = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **PLAIN)
    report = init_from(target, tmp_path / "big.pth")
    assert list(report.converted) == ["pos_embed"] and "(1, 257, 32)→(1, 65, 32)" in report.converted["pos_embed"]
    assert not report.skipped and not report.fresh


def test_a_mix_run_from_plain_weights_builds_a_2d_wide_mi_embedding(mix_run):
    settings = json.loads((mix_run / "config.json").read_text())
    assert settings["model"]["name"] == "mivit_tiny_patch4_32"
    assert settings["model"]["kwargs"]["mi_hidden_dim"] == 64
    [init] = records(mix_run, "init")
    assert init["loaded"] == 28 and len(init["converted"]) == 4  # pos_embed loaded: the same 8×8 grid
    assert sorted(init["skipped"]) == ["head.bias", "head.weight"]


def test_fine_tune_from_a_run_s_best_weights(shuffle_run, releases, tmp_path):
    train(config(releases["shuffle"], tmp_path / "ft", init_from=str(shuffle_run / "best.pt")))
    [init] = records(tmp_path / "ft", "init")
    assert init["loaded"] == 35 and not init["converted"] and not init["skipped"] and not init["fresh"]


@pytest.mark.parametrize("mode", ["shuffle", "mix"])
def test_public_pretraining_under_a_throwaway_key_starts_a_run_on_the_owner_s_release(
        mode, releases, source, tmp_path_factory, tmp_path):
    """The recipe of docs §8 through the CLI: a run on a release under a throwaway keystore
    initialises a run on the owner's release (another key, another dataset id); every tensor
    is taken as is, the MI embedding too (not rebuilt 2·D wide from its first conv)."""
    throwaway = make_keystore(tmp_path_factory, b"throwaway: any passphrase at all, deleted after")
    public = tmp_path / "public"
    manifest = make_release(public, throwaway, source, mode, sub_patch=2 if mode == "mix" else None,
                            shard_samples=64, dataset_id="public-data")
    owner = json.loads((releases[mode] / "manifest.json").read_text())
    assert manifest.key_id != owner["key_id"]
    args = ["--epochs", "1", "--batch-size", "32", "--lr", "3e-3", "--warmup-epochs", "0", "--workers", "0",
            "--quiet", *(x for k, v in TINY.items() for x in ("--model-arg", f"{k}={v}"))]
    result = CliRunner().invoke(cli, ["classify", "--shards", str(public), "--out", str(tmp_path / "pre"), *args])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["classify", "--shards", str(releases[mode]), "--out", str(tmp_path / "ft"),
                                      "--init-from", str(tmp_path / "pre" / "best.pt"), *args])
    assert result.exit_code == 0, result.output
    [init] = records(tmp_path / "ft", "init")
    assert len(load_checkpoint(tmp_path / "pre" / "best.pt")["weights"]) == init["loaded"]
    assert not init["converted"] and not init["skipped"] and not init["fresh"]
    settings = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert settings["model"] == json.loads((tmp_path / "pre" / "config.json").read_text())["model"]


def test_a_resumed_mix_run_from_plain_weights_is_rebuilt_as_wide_without_them(releases, plain_weights, tmp_path):
    """On resume the MI embedding's width comes from last.pt: the --init-from file may be gone."""
    weights = tmp_path / "vit.safetensors"
    weights.write_bytes(plain_weights["safetensors"].read_bytes())
    train(config(releases["mix"], tmp_path / "run", init_from=str(weights)))
    weights.unlink()
    summary = train(config(releases["mix"], tmp_path / "run", init_from=str(weights), epochs=2), resume=True)
    assert summary["step"] == 2 * 256 // 32
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model"]["kwargs"]["mi_hidden_dim"] == 64


def test_timm_name_reads_the_local_cache_only(plain_weights, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from train.initialise import load_weights

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_weights("timm:vit_tiny_patch16_224")
    repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(plain_weights["safetensors"].read_bytes())
    assert "blocks.0.attn.qkv.weight" in load_weights("timm:vit_tiny_patch16_224")


# -- 2. extending a run; 3. logs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def extended(releases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "extended"
    train(config(releases["shuffle"], out, epochs=1, warmup_epochs=1))
    train(config(releases["shuffle"], out, epochs=3, warmup_epochs=1), resume=True)
    return out


def test_a_finished_run_extends_and_its_cosine_stretches_to_the_new_end(extended, releases):
    epochs = records(extended, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert records(extended, "extend") == [{"event": "extend", "step": 8, "epochs_was": 1, "epochs": 3}]
    # the run started with epochs=1, so no warm-up (min(1, 1 - 1)); the extension keeps that
    cfg = config(releases["shuffle"], "x", epochs=3, warmup_epochs=1)
    sched = lr_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr), cfg, 8, warmup=0)
    for r in records(extended, "train"):
        if r["step"] > 8:
            sched.step_update(num_updates=r["step"] - 1)
            assert r["lr"] == pytest.approx(sched.optimizer.param_groups[0]["lr"], rel=1e-9), r
    assert load_checkpoint(extended / "last.pt")["config"]["epochs"] == 3
    assert json.loads((extended / "config.json").read_text())["config"]["epochs"] == 3


def test_a_resume_cannot_cut_a_run_short(extended, releases):
    with pytest.raises(RunError, match="epochs 2 is fewer than the 3"):
        train(config(releases["shuffle"], extended, epochs=2, warmup_epochs=1), resume=True)


def test_tensorboard_and_csv_hold_the_jsonl_numbers(extended):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jsonl = records(extended, "train") + records(extended, "epoch")
    acc = EventAccumulator(str(extended / "tb"))
    acc.Reload()
    for r in jsonl:
        for key in ("loss", "lr", "train_loss", "val_top1", "val_loss"):
            if key in r:
                events = {e.step: e.value for e in acc.Scalars(f"{r['event']}/{key}")}
                assert events[r["step"]] == pytest.approx(r[key], rel=1e-6), (r["event"], key)
    assert len(acc.Scalars("train/loss")) == len(records(extended, "train"))
    rows = list(csv.DictReader(io.StringIO((extended / "metrics.csv").read_text())))
    jsonl_rows = [r for r in map(json.loads, (extended / "metrics.jsonl").read_text().splitlines())
                  if r["event"] in ("train", "epoch")]
    assert len(rows) == len(jsonl_rows)
    for row, r in zip(rows, jsonl_rows):
        assert (row["event"], int(row["step"])) == (r["event"], r["step"])
        for key in ("loss", "lr", "val_top1", "train_loss"):
            if key in r:
                assert float(row[key]) == r[key]  # repr round trip: the very same float


# -- 4. predict and export -----------------------------------------------------------------------

def _plain_images(source: Path, folder: Path, count: int = 12) -> list[Path]:
    """Real held-out images at the release's 32 px, prepared as the data owner's job does."""
    from encrypt.prepare import prepare_pixels

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(sorted((source / "val").rglob("*.png"))[:count]):
        pixels = prepare_pixels(src, size=32, resize=32, channels=1)
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(pixels[..., 0]).save(paths[-1])
    return paths


def test_a_shuffle_model_predicts_plain_images_as_their_shuffled_versions(shuffle_run, source, tmp_path):
    from encrypt.ciphers import shuffle

    plain = _plain_images(source, tmp_path / "plain")
    rng = np.random.default_rng(0)
    shuffled = []
    for path in plain:
        pixels = np.asarray(Image.open(path))
        shuffled.append(tmp_path / f"shuffled-{path.name}")
        Image.fromarray(shuffle(pixels, rng.permutation(64), 4)).save(shuffled[-1])
    predictor = Predictor(shuffle_run / "best.pt")
    a, b = predictor.predict(plain, top_k=10), predictor.predict(shuffled, top_k=10)
    for x, y in zip(a, b):
        assert [t["class"] for t in x["top"]][:3] == [t["class"] for t in y["top"]][:3]
        assert [t["prob"] for t in x["top"]] == pytest.approx([t["prob"] for t in y["top"]], abs=1e-5)


def test_the_keyless_mix_is_the_encryptor_s_as_written_in_the_shards(releases, source):
    """Every stored image of the real job's mix shards is train's keyless mix of one prepared source."""
    from encrypt.prepare import prepare_pixels

    mixed = set()
    for src in sorted((source / "val").rglob("*.png")):
        pixels = torch.from_numpy(prepare_pixels(src, size=32, resize=32, channels=1)).permute(2, 0, 1)[None]
        mixed.add(hashlib.sha256(keyless_mix(pixels, 4, 2).numpy().tobytes()).hexdigest())
    stored = set()
    for shard in sorted(releases["mix"].glob("val-*.tar")):
        for _, members in read_samples(shard):
            image = np.asarray(Image.open(io.BytesIO(members["png"])))
            stored.add(hashlib.sha256(image[None, None].tobytes()).hexdigest())
    assert len(stored) == 64 and stored == mixed


def test_a_mix_model_predicts_plain_images_as_the_owner_s_mixed_ones(mix_run, source, tmp_path):
    from encrypt.ciphers import mix

    plain = _plain_images(source, tmp_path / "plain")
    batch = np.stack([np.asarray(Image.open(p))[..., None] for p in plain])  # B×H×W×1
    owner = torch.from_numpy(np.stack([mix(b, 4, 2) for b in batch])).permute(0, 3, 1, 2)
    predictor, stored = Predictor(mix_run / "best.pt"), Predictor(mix_run / "best.pt", encrypted=True)
    plain_batch = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(predictor.stored(plain_batch), owner)
    ours = predictor.probabilities(plain_batch)
    assert torch.allclose(ours, stored.probabilities(owner.contiguous()), atol=1e-6)


def test_only_a_model_that_sees_what_the_key_decides_needs_the_key():
    def make(name, **kw):
        return timm.create_model(name, num_classes=10, in_chans=1, **TINY, **kw)

    pevit, vit = make("pevit_tiny_patch4_32"), make("vit_tiny_patch16_224", patch_size=4, img_size=32)
    d4, mivit = make("d4vit_tiny_patch4_32"), make("mivit_tiny_patch4_32")
    assert key_needed(pevit, "shuffle") is None and key_needed(pevit, "mix-shuffle") is None
    assert key_needed(mivit, "mix") is None and key_needed(vit, "none") is None
    assert key_needed(d4, "mix-shuffle-orient") is None
    assert "tile order" in key_needed(vit, "shuffle")
    assert "turn" in key_needed(pevit, "mix-shuffle-orient")


def test_predict_prints_one_json_line_per_image_with_class_names(shuffle_run, source, tmp_path):
    plain = _plain_images(source, tmp_path / "plain", count=3)
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(shuffle_run / "best.pt"), "--top-k", "2",
                                      *map(str, plain)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [line["image"] for line in lines] == list(map(str, plain))
    names = set(json.loads((shuffle_run / "config.json").read_text())["release"]["class_names"])
    assert all(len(line["top"]) == 2 and {t["name"] for t in line["top"]} <= names for line in lines)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_loads_in_plain_timm_with_the_same_logits(mix_run, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(mix_run / "best.pt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    described = json.loads(out.with_suffix(".json").read_text())
    model = timm.create_model(described["model"], pretrained=True,
                              pretrained_cfg_overlay=described["pretrained_cfg_overlay"], **described["kwargs"])
    state = load_checkpoint(mix_run / "best.pt")
    ours = timm.create_model(state["model"]["name"], **state["model"]["kwargs"])
    ours.load_state_dict(state["weights"])
    x = torch.randn(3, 1, 16, 16)
    model.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), ours(x), atol=1e-6)


def test_export_refuses_an_unknown_suffix(mix_run, tmp_path):
    with pytest.raises(ValueError, match="safetensors or .pth"):
        export_checkpoint(mix_run / "best.pt", tmp_path / "model.onnx")
