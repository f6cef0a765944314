"""Detection on real releases: YOLOS on MI-ViT, box geometry, training, COCO evaluation.

The data is a real COCO-format set (Fashion-MNIST items pasted on canvases) encrypted by the
data owner's own code path twice: `mix` and the plain `none` baseline, same keystore and
dataset id, so a sample has the same opaque key in both releases.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from canvas_coco import write_canvas_coco
from encrypt import ciphers
from encrypt.main import encrypt_dataset
from encrypt.plan import JobSettings
from encrypt.sources import list_coco
from releases import keys_of
from keys.keystore import create_keystore
from shards.manifest import ManifestError
from shards.reader import ShardError, iter_samples
from train.box_ops import normalized_to_pixels
from train.checkpoint import CheckpointError
from train.detection_data import (
    CategoryMap,
    DetectionLoader,
    DetectionTransform,
    flip_target,
    open_detection_release,
    target_from_meta,
)
from train.config import DetectionConfig
from train.engine import RunError, evaluate_detection_checkpoint, fit_detection
from train.tasks.detection import build_detector, coco_map, evaluate_detection, predictions_to_coco
from train.models.yolos import YOLOS, detector_for_cipher, reference_grid

SIZE, PATCH, SUB = 64, 8, 4
CANVAS = 64
IMAGES = 16


@pytest.fixture(scope="module")
def canvas(tmp_path_factory, fmnist_small) -> tuple[Path, dict]:
    items, labels = fmnist_small
    root = tmp_path_factory.mktemp("canvas")
    image_dir, ann_path = write_canvas_coco(root, items, labels, images=IMAGES, canvas=CANVAS)
    return image_dir, json.loads(ann_path.read_text()) | {"path": str(ann_path)}


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return create_keystore(tmp_path_factory.mktemp("ks") / "keystore", b"detection test passphrase 53")


@pytest.fixture(scope="module")
def releases(tmp_path_factory, canvas, keystore) -> dict[str, Path]:
    """The canvas set encrypted with `mix` and with `none` (plain baseline), 2 shards each."""
    image_dir, coco = canvas
    out = {}
    for mode in ("mix", "none"):
        settings = JobSettings(mode=mode, patch=PATCH, sub_patch=SUB if mode == "mix" else None, size=SIZE,
                               resize=SIZE, views=1, format="png", quality=95, channels=1, shard_samples=8,
                               task="detection", min_side=1)
        out[mode] = tmp_path_factory.mktemp("rel") / mode
        encrypt_dataset(list_coco(image_dir, Path(coco["path"])), out[mode], keystore, "canvas", settings,
                        progress=False)
    return out


@pytest.fixture(scope="module")
def handful(tmp_path_factory, fmnist_small, keystore) -> Path:
    """Eight other canvases, `mix`, one shard: what the tiny detector memorises."""
    items, labels = fmnist_small
    root = tmp_path_factory.mktemp("handful")
    image_dir, ann_path = write_canvas_coco(root, items[200:], labels[200:], images=8, canvas=CANVAS, seed=1)
    settings = JobSettings(mode="mix", patch=PATCH, sub_patch=SUB, size=SIZE, resize=SIZE, views=1,
                           format="png", quality=95, channels=1, shard_samples=8, task="detection", min_side=1)
    encrypt_dataset(list_coco(image_dir, ann_path), root / "release", keystore, "handful", settings, progress=False)
    return root / "release"


def _by_key(release: Path) -> dict:
    return {s.key: s for s in iter_samples(release, "train")}


# -- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", timm.list_models("yolos_*"))
def test_every_registered_detector_builds(name: str) -> None:
    nano = "nano" in name  # the wider ones are built on the meta device (no memory, no init)
    model = timm.create_model(name, num_classes=10, num_det_tokens=7, device=None if nano else "meta")
    assert isinstance(model, YOLOS)
    assert model.det_token.shape[1] == 7 and model.class_embed[-1].out_features == 11
    if not nano:
        return
    channels, height, width = model.pretrained_cfg["input_size"]
    x = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.eval()(x)
    assert out["pred_logits"].shape == (2, 7, 11) and out["pred_boxes"].shape == (2, 7, 4)
    # before training every token's box is centred on its own reference point, 3 × 3 grid
    centres = reference_grid(7)
    torch.testing.assert_close(out["pred_boxes"][..., :2], centres.expand(2, -1, -1))
    assert centres[:3, 0].tolist() == pytest.approx([1 / 6, 3 / 6, 5 / 6])
    assert centres[3:, 1].tolist() == pytest.approx([1 / 2] * 3 + [5 / 6])
    # patch positions start as a 2-D sin-cos table: along a row, likeness falls with distance
    pos = model.backbone.pos_embed[0, 1:].detach()
    similarity = [float(torch.cosine_similarity(pos[0], pos[i], dim=0)) for i in (0, 1, 3, 7)]
    assert similarity == sorted(similarity, reverse=True) and similarity[-1] < similarity[1] - 0.1


def test_detector_for_cipher_picks_the_family_and_geometry(releases) -> None:
    cipher = open_detection_release(releases["mix"]).cipher.to_dict()
    name, kwargs = detector_for_cipher(cipher, 10, size="nano")
    assert name == "yolos_mivit_nano_patch8_64"
    assert kwargs == {"num_classes": 10, "num_det_tokens": 100, "aux_loss": False, "in_chans": 1,
                           "patch_size": 8, "img_size": 64, "sub_patch": 4}
    plain = open_detection_release(releases["none"]).cipher.to_dict()
    assert detector_for_cipher(plain, 10, size="nano")[0] == "yolos_vit_nano_patch8_64"
    with pytest.raises(ValueError, match="shuffled patches lose positions"):
        detector_for_cipher(dict(cipher, mode="shuffle"), 10)


def test_mixed_detector_sees_the_same_tokens_as_on_the_plain_image(releases) -> None:
    """MI linearity carries over: the detector on the stored mixed image equals the same
    weights averaging after the conv on the full plain image."""
    plain = np.stack([s.image for s in iter_samples(releases["none"], "train")][:4])
    on_mixed = timm.create_model("yolos_mivit_nano_patch8_64", num_classes=10, in_chans=1, num_det_tokens=5).eval()
    on_plain = timm.create_model("yolos_mivit_nano_patch8_64", num_classes=10, in_chans=1, num_det_tokens=5,
                                 input_mixed=False).eval()
    on_plain.load_state_dict(on_mixed.state_dict())
    x = torch.from_numpy(plain).permute(0, 3, 1, 2).float() / 255
    mixed = torch.from_numpy(ciphers.mix_float(plain, PATCH, SUB)).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        a, b = on_mixed(mixed), on_plain(x)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-4, rtol=0)


def test_position_embeddings_follow_the_image_size() -> None:
    # A classifier trained at 224 px (14×14 patches) initialises a detector for 320 px shards.
    classifier = timm.create_model("mivit_tiny_patch16_224", num_classes=5)
    detector = timm.create_model("yolos_mivit_tiny_patch16_224", num_classes=3, num_det_tokens=4, img_size=320)
    assert detector.backbone.pos_embed.shape == (1, 1 + 20 * 20, 192)
    missing = detector.load_backbone(classifier.state_dict())
    assert missing == []
    expected = resample_abs_pos_embed(classifier.pos_embed, [20, 20], old_size=[14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(detector.backbone.pos_embed, expected)
    torch.testing.assert_close(detector.backbone.pos_embed[:, 0], classifier.pos_embed[:, 0])
    torch.testing.assert_close(detector.backbone.blocks[3].mlp.fc1.weight, classifier.blocks[3].mlp.fc1.weight)
    # and at run time: the 64 px detector reads a 96 px release's 48 px mixed images
    nano = timm.create_model("yolos_mivit_nano_patch8_64", num_classes=3, num_det_tokens=4).eval()
    with torch.no_grad():
        assert nano(torch.rand(1, 3, 48, 48))["pred_boxes"].shape == (1, 4, 4)


# -- boxes through the data owner's geometry -------------------------------------------------

def test_boxes_round_trip_through_letterbox_and_mix(releases, canvas, keystore) -> None:
    _, coco = canvas
    # the owner's side: which canvas is which key (each release has its own keys since key separation)
    images = {keys_of(keystore, releases["mix"]).sample_id(i["file_name"]): i for i in coco["images"]}
    plain_key = {keys_of(keystore, releases["mix"]).sample_id(i["file_name"]):
                 keys_of(keystore, releases["none"]).sample_id(i["file_name"]) for i in coco["images"]}
    objects: dict[int, list] = {}
    for a in coco["annotations"]:
        objects.setdefault(a["image_id"], []).append(a)
    manifest = open_detection_release(releases["mix"]).manifest
    categories = CategoryMap.from_manifest(manifest)
    plain = _by_key(releases["none"])
    checked = 0
    for key, sample in _by_key(releases["mix"]).items():
        # the stored image is exactly the mix of the plain release's letterboxed image
        np.testing.assert_array_equal(sample.image, ciphers.mix(plain[plain_key[key]].image, PATCH, SUB))
        t_mix = target_from_meta(sample.meta, categories, (32, 32))
        t_plain = target_from_meta(plain[plain_key[key]].meta, categories, (64, 64))
        torch.testing.assert_close(t_mix["boxes"], t_plain["boxes"], atol=2e-3 / 32, rtol=0)
        # the owner's boxes, letterboxed (scaled, clipped to the resized content) then × s/p
        info, anns = images[key], objects[images[key]["id"]]
        scale = SIZE / max(info["width"], info["height"])
        width, height = round(info["width"] * scale), round(info["height"] * scale)
        corners = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]) * scale
        corners = torch.minimum(corners, torch.tensor([width, height, width, height]))
        want = torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2]], 1) * SUB / PATCH
        torch.testing.assert_close(normalized_to_pixels(t_mix["boxes"], (32, 32)), want, atol=2e-3, rtol=0)
        torch.testing.assert_close(t_mix["boxes_px"], want, atol=2e-3, rtol=0)
        assert [categories.category_id(c) for c in t_mix["labels"].tolist()] == [a["category_id"] for a in anns]
        checked += len(anns)
    assert checked == len(coco["annotations"]) >= IMAGES


def test_loader_batches_carry_the_shard_targets(releases) -> None:
    release = open_detection_release(releases["mix"])
    categories = CategoryMap.from_manifest(release.manifest)
    expected = [target_from_meta(s.meta, categories, (32, 32)) for s in iter_samples(releases["mix"], "train")]
    loader = DetectionLoader(release, "train", batch_size=5, train=False)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 4  # 16 samples in shard order: 5, 5, 5, 1
    images = torch.cat([b[0] for b in batches])
    targets = [t for _, ts in batches for t in ts]
    assert images.shape == (IMAGES, 1, 32, 32) and images.dtype == torch.uint8
    for got, want in zip(targets, expected, strict=True):
        for k in want:
            assert torch.equal(got[k], want[k]), k
    train = DetectionLoader(release, "train", batch_size=5, train=True, seed=1)
    assert len(train) == 3 and all(len(b[1]) == 5 for b in train.epoch(0))


def test_hflip_commutes_with_mix_and_moves_the_boxes(releases) -> None:
    manifest = open_detection_release(releases["none"]).manifest
    categories = CategoryMap.from_manifest(manifest)
    for sample in list(iter_samples(releases["none"], "train"))[:6]:
        flipped = sample.image[:, ::-1]
        np.testing.assert_array_equal(ciphers.mix(flipped, PATCH, SUB), ciphers.mix(sample.image, PATCH, SUB)[:, ::-1])
        before = target_from_meta(sample.meta, categories, (64, 64))
        target = flip_target(before)
        img = flipped[..., 0].astype(float)
        for box, (x0, _, w0, _) in zip(target["boxes_px"].tolist(), before["boxes_px"].tolist()):
            x, y, w, h = (round(v, 3) for v in box)  # float32 noise off the edges
            assert x == pytest.approx(64 - x0 - w0, abs=1e-3)
            rows = slice(int(np.ceil(y)), int(y + h))
            crop = img[rows, int(np.ceil(x)):int(x + w)]  # the object is where the flipped box says
            assert crop.max() > 50  # not an empty corner of the canvas
            np.testing.assert_array_equal(crop, sample.image[rows, int(np.ceil(round(x0, 3))):int(round(x0 + w0, 3)), 0][:, ::-1])
        torch.testing.assert_close(normalized_to_pixels(target["boxes"], (64, 64)), target["boxes_px"])
    release = open_detection_release(releases["mix"])
    images, targets = next(iter(DetectionLoader(release, "train", batch_size=4, train=False).epoch(0)))
    x, moved = DetectionTransform(release.cipher, [0.5], [0.5], hflip=1.0, train=True)(images, targets)
    torch.testing.assert_close(x, (images.flip(-1).float() / 255 - 0.5) / 0.5)
    torch.testing.assert_close(moved[0]["boxes"][:, 0], 1 - targets[0]["boxes"][:, 0])


def test_bad_detection_data_are_one_line_errors(releases, tmp_path) -> None:
    categories = CategoryMap((1, 2), ("a", "b"))
    meta = {"boxes": [[1.0, 2.0, 5.0, 5.0]], "category_ids": [2], "image_size": [32, 32]}
    assert target_from_meta(meta, categories, (32, 32))["labels"].tolist() == [1]
    with pytest.raises(ShardError, match=r"box 0 .* outside the 32x32 image"):
        target_from_meta(dict(meta, boxes=[[30.0, 2.0, 5.0, 5.0]]), categories, (32, 32))
    with pytest.raises(ShardError, match="category id 7 is not in the manifest"):
        target_from_meta(dict(meta, category_ids=[7]), categories, (32, 32))
    with pytest.raises(ShardError, match="image_size"):
        target_from_meta(dict(meta, image_size=[64, 64]), categories, (32, 32))
    with pytest.raises(ShardError, match="no json member"):
        target_from_meta(None, categories, (32, 32))
    # a shard cut short is named with the reason before any training starts
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in releases["mix"].iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    shard = sorted(damaged.glob("train-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:-700])
    with pytest.raises(ShardError, match=rf"{shard.name}: \d+ bytes, the manifest says"):
        open_detection_release(damaged)
    with pytest.raises(ManifestError, match="no split 'val'"):
        open_detection_release(releases["mix"], ["train", "val"])


# -- COCO evaluation ---------------------------------------------------------------------------

def _oracle_outputs(targets: list[dict], categories: CategoryMap, tokens: int, shift: float = 0.0,
                    wrong_class: bool = False) -> dict[str, torch.Tensor]:
    """Detector outputs that put one token on each true object (the rest say no object)."""
    k = len(categories)
    logits = torch.full((len(targets), tokens, k + 1), -10.0)
    logits[..., k] = 10.0
    boxes = torch.full((len(targets), tokens, 4), 0.5)
    for b, t in enumerate(targets):
        n = len(t["labels"])
        labels = (t["labels"] + 1) % k if wrong_class else t["labels"]
        logits[b, torch.arange(n), k] = -10.0
        logits[b, torch.arange(n), labels] = 10.0
        boxes[b, :n] = t["boxes"]
        towards_centre = torch.where(t["boxes"][:, 0] < 0.5, 1.0, -1.0)  # never off the image
        boxes[b, :n, 0] += towards_centre * shift * t["boxes"][:, 2]
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_coco_map_of_real_boxes_mapped_back_to_stored_pixels(releases) -> None:
    release = open_detection_release(releases["mix"])
    categories = CategoryMap.from_manifest(release.manifest)
    images, targets = next(iter(DetectionLoader(release, "train", batch_size=8, train=False).epoch(0)))
    ids = list(range(1, 9))
    truth = [{"image_id": i, "category_id": categories.category_id(c), "bbox": box, "area": a, "iscrowd": 0}
             for i, t in zip(ids, targets)
             for box, c, a in zip(t["boxes_px"].tolist(), t["labels"].tolist(), t["area"].tolist())]
    meta = [{"id": i, "height": 32, "width": 32} for i in ids]
    sizes = torch.stack([t["size"] for t in targets])

    def score(**kwargs) -> dict:
        outputs = _oracle_outputs(targets, categories, tokens=6, **kwargs)
        return coco_map(predictions_to_coco(outputs, sizes, categories, ids), truth, meta, categories)

    perfect = score()
    assert perfect["map"] == pytest.approx(1.0) and perfect["ap75"] == pytest.approx(1.0)
    assert score(wrong_class=True)["map"] == pytest.approx(0.0)
    half = score(shift=0.5)  # a box and itself moved by half its width: IoU 1/3
    assert half["ap50"] == pytest.approx(0.0) and half["map"] == pytest.approx(0.0)
    slight = score(shift=0.15)  # IoU 0.85/1.15 = 0.74: a hit at IoU 0.5 to 0.7, a miss from 0.75
    assert slight["ap50"] == pytest.approx(1.0) and slight["ap75"] == pytest.approx(0.0)
    assert slight["map"] == pytest.approx(0.5)
    # a box in plain-image pixels would be twice too large in the stored 32 px image
    wrong = predictions_to_coco(_oracle_outputs(targets, categories, 6), sizes * 2, categories, ids)
    assert coco_map(wrong, truth, meta, categories)["ap50"] < 0.2


# -- training ----------------------------------------------------------------------------------

def _config(release: Path, out: Path, **kw) -> DetectionConfig:
    base = dict(shards=str(release), out=str(out), model="nano", model_kwargs={"depth": 2}, num_det_tokens=10,
                batch_size=8, lr=1e-3, min_lr=1e-3, warmup_epochs=0, hflip=0.0, workers=0, progress=False,
                val_split="train", log_every=1)
    return DetectionConfig(**(base | kw))


def test_tiny_detector_overfits_a_handful_of_canvases(handful, releases, tmp_path) -> None:
    config = _config(handful, tmp_path / "run", epochs=100, eval_every=50)
    release = open_detection_release(handful)
    categories = CategoryMap.from_manifest(release.manifest)
    torch.manual_seed(config.seed)  # the run's own initial weights
    _, _, untrained = build_detector(config, release)
    loader = DetectionLoader(release, "train", batch_size=8, train=False)
    plain = DetectionTransform(release.cipher, [0.5], [0.5])
    before = evaluate_detection(untrained, loader.epoch(0), plain, categories, device=torch.device("cpu"))

    summary = fit_detection(config, device="cpu")
    after = summary["val"]
    assert before["map"] < 0.05 and before["ap50"] < 0.1, before
    assert after["map"] > 0.4 and after["ap50"] > 0.6, after
    assert summary["step"] == 100

    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.json", "metrics.jsonl", "metrics.csv", "tb", "last.pt", "best.pt"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert len(epochs) == 100 and lines[0]["event"] == "config"
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 3
    scored = [r["val_map"] for r in epochs if "val_map" in r]
    assert len(scored) == 2 and summary["best_map"] == max(scored)
    again = evaluate_detection_checkpoint(run / "best.pt", handful, split="train", device="cpu")
    assert again["map"] == pytest.approx(summary["best_map"]) and again["images"] == 8
    # a model for mixed 32 px images cannot be scored on plain 64 px shards
    with pytest.raises(CheckpointError, match="trained on mix p=8 s=4 64x64 1ch shards"):
        evaluate_detection_checkpoint(run / "best.pt", releases["none"], split="train", device="cpu")


def test_resume_continues_step_for_step_on_the_plain_baseline(releases, tmp_path, monkeypatch) -> None:
    kw = dict(epochs=3, checkpoint_every=1, val_split=None, hflip=0.5, model_kwargs={"depth": 1})
    straight = fit_detection(_config(releases["none"], tmp_path / "a", **kw), device="cpu")
    calls = {"n": 0}
    original = DetectionTransform.__call__

    def dies_at_step_4(self, images, targets):
        if self.train:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        return original(self, images, targets)

    monkeypatch.setattr(DetectionTransform, "__call__", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        fit_detection(_config(releases["none"], tmp_path / "b", **kw), device="cpu")
    monkeypatch.setattr(DetectionTransform, "__call__", original)
    with pytest.raises(RunError, match="already holds a run"):
        fit_detection(_config(releases["none"], tmp_path / "b", **kw), device="cpu")
    with pytest.raises(RunError, match="lr was 0.001, now 0.002"):
        fit_detection(_config(releases["none"], tmp_path / "b", **(kw | {"lr": 2e-3})), resume=True, device="cpu")
    resumed = fit_detection(_config(releases["none"], tmp_path / "b", **kw), resume=True, device="cpu")
    assert resumed["step"] == straight["step"] == 6
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["weights"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
               if r["event"] == "train"] for run in ("a", "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_detect_and_evaluate_commands_on_a_real_release(handful, tmp_path) -> None:
    """`train-encrypted detect` trains and writes best.pt; `evaluate` routes detection releases to COCO mAP."""
    from click.testing import CliRunner

    from train.cli import cli

    run = tmp_path / "run"
    trained = CliRunner().invoke(cli, ["detect", "--shards", str(handful), "--out", str(run), "--model", "nano",
                                       "--model-arg", "depth=2", "--det-tokens", "10", "--epochs", "2",
                                       "--batch-size", "8", "--lr", "1e-3", "--hflip", "0", "--workers", "0",
                                       "--val-split", "train", "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    scored = CliRunner().invoke(cli, ["evaluate", "--shards", str(handful), "--checkpoint", str(run / "best.pt"),
                                      "--split", "train", "--workers", "0"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.output.strip().splitlines()[-1])
    assert 0.0 <= result["map"] <= 1.0 and result["ap50"] is not None
    missing = CliRunner().invoke(cli, ["detect", "--shards", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


# -- one engine: the same LR rule, the same resume as classify -------------------------------

def test_the_lr_rule_is_the_same_for_both_tasks_and_is_what_a_detection_run_logs(releases, tmp_path) -> None:
    from train.config import TrainConfig
    from train.engine import lr_schedule

    def schedule(config, steps_per_epoch: int, steps: int) -> list[float]:
        """The lr each step uses: the scheduler's value after step_update(step - 1)."""
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
        scheduler = lr_schedule(optimizer, config, steps_per_epoch)
        lrs = []
        for done in range(steps):
            scheduler.step_update(num_updates=done)
            lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    same = dict(shards="s", out="o", epochs=4, lr=1e-3, min_lr=1e-5, warmup_epochs=1)
    classify, detect = schedule(TrainConfig(**same), 3, 12), schedule(DetectionConfig(**same), 3, 12)
    assert classify == detect
    assert classify[0] == pytest.approx(1e-6) and classify[3] == pytest.approx(1e-3)  # warm-up: one epoch
    assert all(a > b for a, b in zip(classify[3:], classify[4:])) and classify[-1] > 1e-5  # cosine after it

    config = _config(releases["none"], tmp_path / "run", epochs=3, warmup_epochs=1, lr=1e-3, min_lr=1e-5,
                     val_split=None, model_kwargs={"depth": 1})
    summary = fit_detection(config, device="cpu")
    logged = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if r["event"] == "train"]
    assert summary["step"] == len(logged) == 6
    assert logged == pytest.approx(schedule(config, 2, 6), rel=1e-12)


def test_detect_resume_reloads_the_run_config_like_classify(releases, tmp_path, monkeypatch) -> None:
    """`detect --resume` needs only --shards and --out: the rest comes from last.pt, and an option
    given now replaces its value where a resume allows (and is refused where it does not)."""
    from click.testing import CliRunner

    from train.cli import cli

    rel = str(releases["none"])
    run = ["--model", "nano", "--model-arg", "depth=1", "--det-tokens", "10", "--epochs", "3", "--batch-size", "8",
           "--lr", "1e-3", "--min-lr", "1e-5", "--eos-coef", "0.2", "--cost-bbox", "4", "--workers", "0",
           "--val-split", "none", "--log-every", "1", "--checkpoint-every", "1", "--quiet"]
    straight = CliRunner().invoke(cli, ["detect", "--shards", rel, "--out", str(tmp_path / "a"), *run])
    assert straight.exit_code == 0, straight.output
    calls = {"n": 0}
    original = DetectionTransform.__call__

    def dies_at_step_4(self, images, targets):
        if self.train:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        return original(self, images, targets)

    monkeypatch.setattr(DetectionTransform, "__call__", dies_at_step_4)
    stopped = CliRunner().invoke(cli, ["detect", "--shards", rel, "--out", str(tmp_path / "b"), *run])
    assert stopped.exit_code != 0
    monkeypatch.setattr(DetectionTransform, "__call__", original)
    refused = CliRunner().invoke(cli, ["detect", "--shards", rel, "--out", str(tmp_path / "b"), "--resume",
                                       "--lr", "2e-3"])
    assert refused.exit_code == 2 and "lr was 0.001, now 0.002" in refused.output, refused.output
    resumed = CliRunner().invoke(cli, ["detect", "--shards", rel, "--out", str(tmp_path / "b"), "--resume",
                                       "--checkpoint-every", "0", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert b["step"] == a["step"] == 6
    assert b["config"] == a["config"] | {"out": str(tmp_path / "b"), "checkpoint_every": 0}
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    losses = [[(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (tmp_path / x / "metrics.jsonl")
                                                          .read_text().splitlines()) if r["event"] == "train"]
              for x in ("a", "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
