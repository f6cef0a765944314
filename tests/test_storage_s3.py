"""Releases on object storage: a real S3 endpoint on 127.0.0.1 (moto in server mode), s3fs.

As s3fs's own suite does: the test starts the server on a free loopback port, points s3fs at
it through fsspec's configuration (FSSPEC_S3_ENDPOINT_URL, which Ray workers inherit too) and
dummy AWS_* variables, and stops it at the end. Never real credentials, never argv.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from audit.verify import verify_release  # noqa: E402
from encrypt.cli import cli as encrypt_cli  # noqa: E402
from encrypt.main import encrypt_dataset  # noqa: E402
from encrypt.sources import list_imagefolder  # noqa: E402
from keys.custody import read_identity  # noqa: E402
from releases import SAMPLE, job_settings, make_keystore, write_imagefolder  # noqa: E402
from shards import storage  # noqa: E402
from shards.manifest import Manifest, ManifestError  # noqa: E402
from shards.reader import iter_samples, load_manifest, verify_shards  # noqa: E402

PASSPHRASE = "s3 test keystore: correct horse battery 5c1e"
GEOMETRY = ["--size", "32", "--resize", "32", "--patch", "4", "--sub-patch", "2", "--grayscale",
            "--format", "png", "--shard-samples", "250", "--mode", "mix-shuffle"]  # README.md's sample job


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and a fresh s3fs pointed at it; yields the filesystem."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "FSSPEC_S3_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1",
           "PATCHVEIL_OWNER_DIR": str(tmp_path_factory.mktemp("owner")),
           "PATCHVEIL_PASSPHRASE": PASSPHRASE}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import fsspec.config
        import s3fs

        mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("bucket")
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory, PASSPHRASE.encode())


@pytest.fixture(scope="module")
def identity(keystore, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("id") / "identity.json"
    path.write_text(json.dumps(keystore.public_identity()))
    return read_identity(path)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "fmnist"
    write_imagefolder(root, {"train": 64, "val": 32})
    return root


@pytest.fixture(scope="module")
def cli_release(s3, keystore, tmp_path_factory) -> str:
    """`encrypt-dataset imagefolder examples/fashion-mnist-sample s3://bucket/release`, run
    from an empty working folder (to see that nothing local named `s3:` appears)."""
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(encrypt_cli, ["imagefolder", str(SAMPLE), "s3://bucket/release",
                                                  "--keystore", str(keystore.directory), "--num-cpus", "0",
                                                  "--quiet", "--dataset-id", "fm-s3", *GEOMETRY])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    assert "wrote 2500 images in 10 shards" in result.output
    assert list(cwd.iterdir()) == []  # no ./s3:/bucket/release, no ./s3:/bucket/release.owner
    return "s3://bucket/release"


def test_encrypt_cli_uploads_shards_and_manifest_to_the_store(s3, cli_release):
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.ls("bucket/release"))
    assert names == sorted(["manifest.json", "_info.json", *[f"train-{i:06d}.tar" for i in range(8)],
                            "val-000000.tar", "val-000001.tar"])
    owner = storage.owner_root() / "s3" / "bucket" / "release.owner"
    assert (owner / "journal.jsonl").is_file() and (owner / "summary.json").is_file()
    assert oct(owner.stat().st_mode & 0o777) == "0o700"


def test_a_local_release_has_the_same_shard_bytes(cli_release, keystore, tmp_path):
    """The local path is unchanged: the same job (the same release, rebuilt from its salt) into a
    folder gives shards with equal digests."""
    local = tmp_path / "release"
    result = CliRunner().invoke(encrypt_cli, ["imagefolder", str(SAMPLE), str(local), "--keystore",
                                              str(keystore.directory), "--num-cpus", "0", "--quiet",
                                              "--dataset-id", "fm-s3", "--rebuild-from", str(cli_release),
                                              *GEOMETRY])
    assert result.exit_code == 0, result.output
    remote, here = load_manifest(cli_release), load_manifest(local)
    assert remote.splits == here.splits
    assert (local.parent / "release.owner").is_dir()  # a local OUT keeps OUT.owner beside it
    assert verify_shards(cli_release, remote) == verify_shards(local, here) == []


def test_audit_verify_reads_the_release_through_the_store(cli_release, identity, keystore):
    report = verify_release(cli_release, identity, custody_log=keystore.custody.path, progress=False)
    assert report.ok, report.failed
    from audit.cli import cli as audit_cli

    public = Path(os.environ["PATCHVEIL_OWNER_DIR"]) / "identity.json"
    public.write_text(json.dumps(keystore.public_identity()))
    result = CliRunner().invoke(audit_cli, ["verify", cli_release, "--public-key", str(public), "--quiet"])
    assert result.exit_code == 0, result.output


def test_readers_refuse_a_shard_the_manifest_does_not_list(s3, cli_release, identity):
    stray = "bucket/release/train-000099.tar"
    s3.copy("bucket/release/train-000000.tar", stray)
    try:
        report = verify_release(cli_release, identity, progress=False)
        assert report.failed == ["shard-files"]
        files = next(c for c in report.checks if c.name == "shard-files")
        assert files.problems == ["train-000099.tar: shard present but not listed in the manifest"]
        problems = verify_shards(cli_release, load_manifest(cli_release))
        assert problems == ["train-000099.tar: shard present but not listed in the manifest"]
    finally:
        s3.rm(stray)


def test_train_one_tiny_epoch_from_the_store(cli_release, tmp_path):
    """train-encrypted classify --shards s3://...: the README's tiny run, one epoch."""
    from train.cli import cli as train_cli

    out = tmp_path / "run"
    result = CliRunner().invoke(train_cli, [
        "classify", "--shards", cli_release, "--out", str(out), "--epochs", "1", "--batch-size", "32",
        "--lr", "3e-3", "--warmup-epochs", "0", "--workers", "1", "--quiet",
        "--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2"])
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file()
    assert "trained 1 epochs" in result.output


def test_a_kill_before_the_manifest_leaves_no_release_and_resume_finishes_it(
        s3, keystore, identity, small_source, monkeypatch):
    """Shards uploaded, then the job dies before the manifest: no manifest, verify refuses,
    readers refuse; --resume against the store reuses every uploaded shard and signs."""
    url = "s3://bucket/killed"
    settings = job_settings(mode="shuffle", shard_samples=16)

    def killed(self, path):  # the job is killed between the last shard and the manifest
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(Manifest, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-killed", settings,
                            progress=False)
    names = {p.rsplit("/", 1)[-1] for p in s3.ls("bucket/killed", refresh=True)}
    assert "manifest.json" not in names and {"train-000000.tar", "val-000001.tar"} <= names
    report = verify_release(url, identity, progress=False)
    assert "manifest-signature" in report.failed
    assert "no readable manifest" in next(c for c in report.checks if c.name == "shard-files").problems[0]
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(url)

    summary = encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-killed", settings,
                              resume=True, progress=False)
    assert summary.resumed_shards == 6 and summary.images_written == 96
    report = verify_release(url, identity, custody_log=keystore.custody.path, progress=False)
    assert report.ok, report.to_dict()
    assert len(list(iter_samples(url, "val"))) == 32


def test_resume_redoes_a_shard_whose_object_changed(s3, keystore, small_source, monkeypatch):
    url = "s3://bucket/changed"
    settings = job_settings(mode="shuffle", shard_samples=16)
    with monkeypatch.context() as mp:
        mp.setattr(Manifest, "save", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-changed", settings, progress=False)
    good = s3.cat_file("bucket/changed/train-000001.tar")
    s3.pipe_file("bucket/changed/train-000001.tar", good[:-1024])  # a damaged object
    summary = encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-changed", settings,
                              resume=True, progress=False)
    assert summary.resumed_shards == 5
    assert s3.cat_file("bucket/changed/train-000001.tar") == good


def test_a_new_job_refuses_a_store_location_that_is_not_empty(s3, keystore, small_source):
    from encrypt.sources import InputError

    with pytest.raises(InputError, match="not empty"):
        encrypt_dataset(list_imagefolder(small_source), "s3://bucket/killed", keystore, "fm-killed",
                        job_settings(mode="shuffle", shard_samples=16), progress=False)


@pytest.mark.slow
def test_ray_workers_upload_their_shards(s3, keystore, small_source):
    """--num-cpus 2: Ray workers (which inherit the endpoint from the environment) upload."""
    pytest.importorskip("ray")
    url = "s3://bucket/ray"
    settings = job_settings(mode="shuffle", shard_samples=16)
    summary = encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-ray", settings,
                              workers=2, progress=False)
    assert summary.shards == 6
    local = encrypt_dataset(list_imagefolder(small_source), Path(os.environ["PATCHVEIL_OWNER_DIR"]) / "ray-local",
                            keystore, "fm-ray", settings, progress=False, rebuild_from=url)
    assert load_manifest(url).splits == load_manifest(Path(os.environ["PATCHVEIL_OWNER_DIR"]) / "ray-local").splits
    assert local.shards == 6


def test_a_missing_s3_backend_is_one_line_naming_the_extra(keystore, tmp_path):
    """Without s3fs (a core install), an s3:// release is refused in one line, nothing written."""
    from core_install import run_tracked

    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps(keystore.public_identity()))
    result = run_tracked(["audit-shards", "verify", "s3://bucket/release", "--public-key", str(identity)],
                         block=("s3fs",), block_distributions=("s3fs",), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "s3fs, which is not installed" in lines[0] and 'patchveil[s3]' in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]


def test_an_imagefolder_source_in_the_store_lists_and_encrypts_as_on_disk(s3, keystore, small_source, tmp_path):
    """SRC as a URL: one recursive listing gives the local listing (items, labels, order, skips),
    and the release from it has the local release's shard bytes."""
    import shutil

    source = shutil.copytree(small_source, tmp_path / "fmnist")
    (source / "train" / "notes.txt").write_text("not an image")  # a file beside the classes
    klass = sorted((source / "val").iterdir())[0]
    (klass / "readme.md").write_text("skipped: not an image")
    (klass / "more").mkdir()
    shutil.copy(next(klass.glob("*.png")), klass / "more" / "a.png")  # a nested folder: os.walk order
    s3.put(str(source), "bucket/src-fm", recursive=True)
    url = "s3://bucket/src-fm"
    remote, local = list_imagefolder(url), list_imagefolder(source)
    assert [(i.split, i.rel_path, i.label) for i in remote.items] == \
        [(i.split, i.rel_path, i.label) for i in local.items]
    assert (remote.skipped, remote.class_names, remote.splits) == (local.skipped, local.class_names, local.splits)
    assert remote.items[0].path == f"{url}/{remote.items[0].rel_path}"

    settings = job_settings(mode="shuffle", shard_samples=16)
    encrypt_dataset(remote, "s3://bucket/from-url", keystore, "fm-src", settings, progress=False)
    encrypt_dataset(local, tmp_path / "from-disk", keystore, "fm-src", settings, progress=False,
                    rebuild_from="s3://bucket/from-url")  # the same release: its salt
    assert load_manifest("s3://bucket/from-url").splits == load_manifest(tmp_path / "from-disk").splits


def test_a_coco_source_in_the_store_reads_annotations_and_images_through_fsspec(
        s3, keystore, fmnist_small, tmp_path):
    from canvas_coco import write_canvas_coco
    from encrypt.plan import JobSettings
    from encrypt.sources import list_coco

    images, labels = fmnist_small
    image_dir, ann_path = write_canvas_coco(tmp_path / "coco", images, labels, images=12, canvas=96)
    s3.put(str(image_dir), "bucket/coco/images", recursive=True)
    s3.put_file(str(ann_path), "bucket/coco/instances.json")
    remote = list_coco("s3://bucket/coco/images", "s3://bucket/coco/instances.json")
    local = list_coco(image_dir, ann_path)
    assert [(i.rel_path, i.annotation) for i in remote.items] == [(i.rel_path, i.annotation) for i in local.items]
    settings = JobSettings(mode="mix", patch=8, sub_patch=4, size=64, resize=64, views=1, format="png",
                           quality=95, channels=1, shard_samples=8, task="detection", min_side=1)
    encrypt_dataset(remote, "s3://bucket/coco-release", keystore, "canvas", settings, progress=False)
    encrypt_dataset(local, tmp_path / "coco-release", keystore, "canvas", settings, progress=False,
                    rebuild_from="s3://bucket/coco-release")
    assert load_manifest("s3://bucket/coco-release").splits == load_manifest(tmp_path / "coco-release").splits


def test_decrypt_reads_a_release_in_the_store(s3, keystore, tmp_path):
    """decrypt works from s3:// (the lock and index stay owner-side)."""
    from encrypt.decrypt import decrypt_release

    url = "s3://bucket/killed"  # the release the kill/resume test finished
    summary = decrypt_release(url, tmp_path / "restored", keystore, progress=False)
    assert summary.samples == 96 and summary.named_by == "path"
    assert len(list((tmp_path / "restored").rglob("*.png"))) == 96


def test_forget_in_the_store_survives_a_kill_and_leaves_a_verified_release(s3, keystore, identity, small_source,
                                                                          tmp_path):
    """`encrypt-dataset forget s3://...` (the console script, a real process) killed after it
    uploaded the rewritten shard but before the manifest switch; a rerun finishes it: the new
    version verifies in the store, the old shard object is gone, the sample is nowhere in the
    store, and the custody log holds one `forgotten`."""
    import subprocess
    import sys

    from encrypt.ciphers import release_keys
    from encrypt.forget import CRASH_AT_ENV

    url = "s3://bucket/forget"
    encrypt_dataset(list_imagefolder(small_source), url, keystore, "fm-forget",
                    job_settings(mode="shuffle", shard_samples=16), progress=False)
    before = load_manifest(url)
    rel = sorted(p.relative_to(small_source).as_posix() for p in small_source.rglob("*.png"))[5]
    sample_id = release_keys(keystore, before).sample_id(rel)
    holding = [e.name for e in before.splits["train"]
               if sample_id.encode() in s3.cat_file(f"bucket/forget/{e.name}")]
    assert len(holding) == 1

    command = [str(Path(sys.executable).parent / "encrypt-dataset"), "forget", url, "--path", rel, "--quiet",
               "--keystore", str(keystore.directory)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(command, env={**env, CRASH_AT_ENV: "moved"}, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert load_manifest(url).digest() == before.digest()  # not switched yet: the old version stands
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 sample(s)" in rerun.stdout

    after = load_manifest(url)
    assert after.extra["previous_manifest"] == before.digest()
    assert after.samples("train") == before.samples("train") - 1
    names = {p.rsplit("/", 1)[-1] for p in s3.ls("bucket/forget", refresh=True)}
    assert holding[0] not in names
    assert names == {"manifest.json", "_info.json", *(e.name for es in after.splits.values() for e in es)}
    assert not any(sample_id.encode() in s3.cat_file(f"bucket/forget/{n}") for n in names)
    report = verify_release(url, identity, custody_log=keystore.directory / "custody.log", progress=False)
    assert report.ok, [c.problems for c in report.checks]
    forgotten = [e for e in keystore.custody.entries() if e["event"] == "forgotten"
                 and e["details"]["manifest_digest"] == after.digest()]
    assert len(forgotten) == 1


def test_nothing_is_signed_when_a_reported_shard_is_not_in_the_store(s3, keystore, small_source, monkeypatch):
    """The driver confirms shards through OUT's filesystem (a worker that wrote elsewhere,
    e.g. to its own node's disk, cannot get a manifest signed)."""
    import encrypt.job
    from encrypt.sources import InputError

    monkeypatch.setattr(encrypt.job.storage, "publish", lambda local, out: None)  # uploads lost
    with pytest.raises(InputError, match="the driver finds no such file.*nothing was signed"):
        encrypt_dataset(list_imagefolder(small_source), "s3://bucket/lost", keystore, "fm-lost",
                        job_settings(mode="shuffle", shard_samples=16), progress=False)
    assert not s3.exists("bucket/lost/manifest.json")
