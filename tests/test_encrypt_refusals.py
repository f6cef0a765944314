"""Jobs that must not be released, and OUT folders a job must not touch (issue 12).

Every test runs the real job on real Fashion-MNIST images (the shipped 28×28 sample or
items written from it) and checks what is left on disk: a refused job signs nothing, logs
nothing in the custody log, adds nothing to the sealed index, leaves OUT absent or empty and
keeps only the owner's skip report; a resumed job removes only its own temp files and
refuses, changing nothing, an OUT that holds anything else; Ray failures are one line.
"""
from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from encrypt.cli import cli
from encrypt.distribute import ShardTaskError, run_shards
from encrypt.main import JobRefused, encrypt_dataset
from encrypt.plan import JobSettings, plan_shards
from encrypt.sources import InputError, list_imagefolder
from keys.keystore import open_keystore
from releases import SAMPLE, job_settings, make_keystore, write_imagefolder
from shards.errors import render
from shards.reader import load_manifest, verify_shards

PASSPHRASE = b"test keystore: correct horse battery 5c1e"

# The README's data-owner defaults: 224 px, patch 16, min side 224/4 = 56 (the sample is 28 px).
DEFAULT_GEOMETRY = dict(mode="mix-shuffle", patch=16, sub_patch=8, size=224, resize=256, views=1,
                        format="jpeg", quality=95, channels=3, shard_samples=1000, min_side=56)


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory, PASSPHRASE)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under folder (relative name → bytes, None for a folder); {} when absent."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def custody_bytes(keystore) -> bytes:
    return (Path(keystore.directory) / "custody.log").read_bytes()


def owner(out: Path) -> Path:
    return out.parent / f"{out.name}.owner"


def cli_env(keystore) -> dict:
    return {"PATCHVEIL_PASSPHRASE": PASSPHRASE.decode(), "PATCHVEIL_KEYSTORE": str(keystore.directory)}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------- releases that write too little

def test_readme_default_geometry_on_the_sample_is_refused_before_anything_is_written(tmp_path, keystore):
    """The README's first command without the 32 px options: every 28 px image is under 56 px."""
    out = tmp_path / "pv-release"
    keystore_before, log_before = snapshot(Path(keystore.directory)), custody_bytes(keystore)
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), "--num-cpus", "0", "--quiet",
                                      "--dataset-id", "fm-readme"], env=cli_env(keystore))
    assert time.perf_counter() - started < 30  # headers only: no image is decoded, no key used
    assert result.exit_code == 2, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
    assert errors[0].startswith(f"error: {out}: refused before writing anything: ")
    assert "split train" in errors[0] and "(spread over its 2000)" in errors[0]
    assert '"too small: 28x28, shorter side under 56" (64)' in errors[0]
    assert "--min-side" in errors[0]
    assert PASSPHRASE.decode() not in result.output
    assert not out.exists() and not owner(out).exists()
    assert custody_bytes(keystore) == log_before  # not even dataset-derived
    assert snapshot(Path(keystore.directory)) == keystore_before  # no sealed index either

    # Corrected as the README says (32 px, patch 4): the same OUT works, no --resume needed.
    fixed = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), "--num-cpus", "0", "--quiet",
                                     "--dataset-id", "fm-readme", "--size", "32", "--resize", "32",
                                     "--patch", "4", "--sub-patch", "2", "--grayscale", "--format", "png"],
                               env=cli_env(keystore))
    assert fixed.exit_code == 0, fixed.output
    assert "wrote 2500 images" in fixed.output
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert verify_shards(out, manifest) == []
    events = [e["event"] for e in open_keystore(keystore.directory, PASSPHRASE).custody.entries()]
    assert events[-2:] == ["dataset-derived", "used-for-job"]


def test_a_run_that_writes_no_image_is_undone_before_signing(tmp_path, keystore):
    """Past the pre-flight (probe=0) the job runs, writes 3 empty shards, then refuses and removes them."""
    out = tmp_path / "release"
    keystore_before, log_before = snapshot(Path(keystore.directory)), custody_bytes(keystore)
    with pytest.raises(JobRefused) as caught:
        encrypt_dataset(list_imagefolder(SAMPLE), out, keystore, "fm-empty", JobSettings(**DEFAULT_GEOMETRY),
                        progress=False, probe=0)
    exc = caught.value
    report = owner(out) / "skipped.json"
    assert str(exc) == (f"{out}: refused, nothing signed or logged: split train would be empty (0 of 2000 "
                        "images written); split val would be empty (0 of 500 images written); skipped 2500 "
                        'of 2500 images, most for "too small: 28x28, shorter side under 56" (2500); '
                        f"the list is in {report}")
    assert render(exc) == (str(exc), 2)  # what the command prints, and exit status 2
    assert exc.written == {"train": 0, "val": 0}
    assert exc.skipped == {"too small: 28x28, shorter side under 56": 2500} and exc.report == report
    assert not out.exists()  # the 3 empty shards it wrote, and OUT it created, are gone
    assert sorted(p.name for p in owner(out).iterdir()) == ["skipped.json"]  # no journal, no summary
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    entries = json.loads(report.read_text())
    assert len(entries) == 2500 and {e["reason"] for e in entries} == {"too small: 28x28, shorter side under 56"}
    assert custody_bytes(keystore) == log_before
    assert snapshot(Path(keystore.directory)) == keystore_before


@pytest.mark.parametrize("out_existed", [False, True], ids=["out-created-by-the-run", "out-made-empty-before"])
def test_a_split_left_empty_is_refused_and_a_corrected_rerun_works(tmp_path, keystore, out_existed):
    """train is fine, every val image is cut in half (its header still reads): val would be empty."""
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 40})
    val_files = write_imagefolder(tmp_path / "val-src", {"val": 10})
    for rel, path in val_files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        target.write_bytes(data[:len(data) // 2])
    out = tmp_path / "release"
    if out_existed:
        out.mkdir()
    keystore_before, log_before = snapshot(Path(keystore.directory)), custody_bytes(keystore)
    with pytest.raises(JobRefused) as caught:
        encrypt_dataset(list_imagefolder(root), out, keystore, "fm-split", job_settings(), progress=False)
    message = str(caught.value)
    assert "split val would be empty (0 of 10 images written)" in message
    assert 'skipped 10 of 50 images, most for "cannot decode: truncated image data" (10)' in message
    assert "split train" not in message
    assert caught.value.written == {"train": 40, "val": 0}
    assert snapshot(out) == {}  # the train shards it wrote are removed
    assert out.exists() is out_existed  # OUT removed only when this run made it
    assert sorted(p.name for p in owner(out).iterdir()) == ["skipped.json"]
    assert custody_bytes(keystore) == log_before
    assert snapshot(Path(keystore.directory)) == keystore_before

    # The owner fixes val; the same OUT takes a fresh run (no --resume, nothing to clean by hand).
    for rel, path in val_files.items():
        (root / rel).write_bytes(path.read_bytes())
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-split", job_settings(), progress=False)
    assert summary.images_written == 50 and summary.resumed_shards == 0
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert manifest.samples("train") == 40 and manifest.samples("val") == 10
    assert verify_shards(out, manifest) == []
    assert json.loads((owner(out) / "skipped.json").read_text()) == []


def _tiny_items(root: Path, count: int) -> None:
    """`count` real Fashion-MNIST items cropped to 5×5 (under the tests' min side 8), in train/coat."""
    sources = sorted((SAMPLE / "train" / "coat").glob("*.png"))[-count:]
    for i, src in enumerate(sources):
        with Image.open(src) as img:
            img.crop((10, 10, 15, 15)).save(root / "train" / "coat" / f"tiny-{i:02d}.png")


@pytest.mark.parametrize("limit, refused", [(0.25, True), (0.3, False), (None, False)])
def test_max_skipped_fraction_refuses_a_split_that_lost_more(tmp_path, keystore, limit, refused):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 28})
    (root / "train" / "coat").mkdir(exist_ok=True)
    _tiny_items(root, 12)  # 12 of 40 = 30% too small
    out = tmp_path / "release"
    log_before = custody_bytes(keystore)
    run = lambda: encrypt_dataset(list_imagefolder(root), out, keystore, "fm-limit", job_settings(),  # noqa: E731
                                  progress=False, max_skipped_fraction=limit)
    if refused:
        with pytest.raises(JobRefused) as caught:
            run()
        assert "split train lost 12 of 40 images (30%), over the limit 0.25" in str(caught.value)
        assert 'most for "too small: 5x5, shorter side under 8" (12)' in str(caught.value)
        assert not out.exists() and custody_bytes(keystore) == log_before
        assert len(json.loads((owner(out) / "skipped.json").read_text())) == 12
    else:
        summary = run()
        assert summary.images_written == 28
        assert verify_shards(out, load_manifest(out, public_key=keystore.public_key)) == []


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True])
def test_max_skipped_fraction_outside_0_1_is_refused_before_anything(tmp_path, keystore, bad):
    out = tmp_path / "release"
    with pytest.raises(InputError) as caught:
        encrypt_dataset(list_imagefolder(SAMPLE), out, keystore, "fm-bad-limit", job_settings(),
                        progress=False, max_skipped_fraction=bad)
    assert str(caught.value).startswith("--max-skipped: must be a fraction in (0, 1]")
    assert not out.exists() and not owner(out).exists()


# ---------------------------------------------------------------- resume touches only its own files

@pytest.fixture()
def interrupted(tmp_path, keystore):
    """OUT as a killed job leaves it: journal of every shard, one shard and the manifest missing,
    temp files of the shard and the manifest write in flight."""
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 40, "val": 8})
    out = tmp_path / "release"
    encrypt_dataset(list_imagefolder(root), out, keystore, "fm-resume", job_settings(), progress=False)
    (out / "manifest.json").unlink()
    (out / "train-000001.tar").unlink()
    (out / ".train-000001.tar.k3x9_q2a.tmp").write_bytes(b"half a shard")
    (out / ".manifest.json.a8d2kq1z.tmp").write_bytes(b"{half a manifest")
    return root, out


FOREIGN = {
    ".precious-notes": lambda out: (out / ".precious-notes").write_text("do not delete"),
    ".git": lambda out: ((out / ".git").mkdir(), (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")),
    "notes.txt": lambda out: (out / "notes.txt").write_text("mine"),
    ".other.tar.abc.tmp": lambda out: (out / ".other.tar.abc.tmp").write_bytes(b"a temp of another job"),
}


def test_resume_removes_only_its_own_temp_files_and_finishes(interrupted, keystore):
    root, out = interrupted
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-resume", job_settings(),
                              resume=True, progress=False)
    assert summary.resumed_shards == 3 and summary.images_written == 48  # train-000001 redone
    assert sorted(p.name for p in out.iterdir()) == ["_info.json", "manifest.json", "train-000000.tar", "train-000001.tar",
                                                     "train-000002.tar", "val-000000.tar"]
    assert verify_shards(out, load_manifest(out, public_key=keystore.public_key)) == []


@pytest.mark.parametrize("name", list(FOREIGN))
def test_resume_refuses_an_out_holding_anything_else_and_changes_nothing(interrupted, keystore, name):
    root, out = interrupted
    FOREIGN[name](out)
    before, owner_before, log_before = snapshot(out), snapshot(owner(out)), custody_bytes(keystore)
    with pytest.raises(InputError) as caught:
        encrypt_dataset(list_imagefolder(root), out, keystore, "fm-resume", job_settings(),
                        resume=True, progress=False)
    assert str(caught.value).startswith(f"{out / name}: ")
    assert "not part of this job" in str(caught.value)
    assert snapshot(out) == before  # the foreign entry and the job's own temp files alike
    assert snapshot(owner(out)) == owner_before and custody_bytes(keystore) == log_before


def test_resume_refusal_on_the_command_line_is_one_line_exit_2(interrupted, keystore):
    root, out = interrupted
    FOREIGN[".precious-notes"](out)
    before = snapshot(out)
    result = CliRunner().invoke(cli, ["imagefolder", str(root), str(out), "--mode", "shuffle", "--patch", "4",
                                      "--size", "32", "--resize", "32", "--grayscale", "--format", "png",
                                      "--shard-samples", "16", "--min-side", "8", "--num-cpus", "0",
                                      "--quiet", "--dataset-id", "fm-resume", "--resume"],
                                env=cli_env(keystore))
    assert result.exit_code == 2, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and errors[0].startswith(f"error: {out / '.precious-notes'}: "), result.output
    assert snapshot(out) == before


def test_a_fresh_run_refuses_an_out_with_only_a_dot_file(tmp_path, keystore):
    out = tmp_path / "release"
    out.mkdir()
    (out / ".precious-notes").write_text("do not delete")
    with pytest.raises(InputError, match="output folder is not empty"):
        encrypt_dataset(list_imagefolder(SAMPLE), out, keystore, "fm-fresh", job_settings(), progress=False)
    assert snapshot(out) == {".precious-notes": b"do not delete"} and not owner(out).exists()


# ---------------------------------------------------------------- Ray failures are one line

@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1:1", "Ray cluster at 127.0.0.1:1: cannot connect ("),
    ("ray://127.0.0.1:1", "Ray cluster at ray://127.0.0.1:1: cannot connect ("),
    ("127.0.0.1", "Ray cluster address '127.0.0.1': expected host:port"),
])
def test_an_unreachable_ray_address_is_one_line_naming_it(tmp_path, keystore, address, reason):
    out = tmp_path / "release"
    log_before = custody_bytes(keystore)
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), "--size", "32", "--resize", "32",
                                      "--patch", "4", "--sub-patch", "2", "--grayscale", "--format", "png",
                                      "--quiet", "--dataset-id", "fm-ray", "--ray-address", address],
                                env=cli_env(keystore))
    assert time.perf_counter() - started < 30
    assert result.exit_code == 2, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and errors[0].startswith(f"error: {reason}"), result.output
    assert "ConnectionError" not in result.output
    assert not out.exists() and not owner(out).exists() and custody_bytes(keystore) == log_before


def test_a_failed_shard_task_names_the_shard_and_the_node(tmp_path, keystore):
    """On a real local Ray worker, OUT missing (as on a node without the shared disk)."""
    pytest.importorskip("ray")
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 8})
    settings = job_settings()
    dataset_key = keystore.dataset_key("fm-task").release_key({"test": 1}, bytes(32))
    tasks = plan_shards(list_imagefolder(root), dataset_key, settings)
    out = tmp_path / "not-on-this-node"
    with pytest.raises(ShardTaskError) as caught:
        run_shards(tasks, settings, dataset_key, out, workers=1)
    message = str(caught.value)
    assert message.startswith(f"{out}/train-000000.tar: shard task failed on node ")
    assert "NotADirectoryError: " in message and "output directory does not exist" in message
    assert "RayTaskError" not in message and "\n" not in message
    assert render(caught.value) == (message, 2)
