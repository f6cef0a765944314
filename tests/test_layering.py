"""DESIGN.md's dependency rules, checked on the source with ast."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)

# package -> top-level imports it may use besides the stdlib and itself
ALLOWED = {
    "keys": {"cryptography", "click", "shards"},
    "shards": {"numpy", "PIL", "webdataset", "cryptography", "click", "tqdm", "fsspec"},  # fsspec: storage only
    "encrypt": {"keys", "shards", "numpy", "PIL", "ray", "click", "tqdm"},
    "train": {"shards", "torch", "timm", "webdataset", "numpy", "PIL", "scipy", "pycocotools",
              "click", "tqdm", "torchvision", "safetensors", "huggingface_hub"},  # the last two: timm's own
    # The learned attacks are models: torch and timm are the auditor's tools too.
    "audit": {"keys", "shards", "encrypt", "numpy", "PIL", "scipy", "skimage", "click", "tqdm",
              "torch", "timm"},
}
# keys sits below the contract: it may use only the stdlib-level error root, CLI plumbing
# and utilities (atomic writes, canonical JSON, base64).
KEYS_MAY_USE_FROM_SHARDS = {"shards.errors", "shards.console", "shards.common"}
# audit re-runs the ciphers, and takes its originals from the encryptor's own pixel preparation
# (so it scores against what the cipher saw); nothing else of encrypt. None: any name.
AUDIT_MAY_USE_FROM_ENCRYPT = {"encrypt.ciphers": None, "encrypt.prepare": {"prepare_pixels", "DecodeError"}}


def imported_modules(source: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, dotted module, names taken) for every absolute import in a module's source.

    `from pkg import mod` counts as module pkg.mod, so a package import cannot hide a module.
    """
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = tuple(a.name for a in node.names)
            if "." not in node.module and node.module in {"encrypt", "shards"}:
                out += [(node.lineno, f"{node.module}.{name}", ()) for name in names]
            else:
                out.append((node.lineno, node.module, names))
    return out


def _audit_encrypt_ok(module: str, names: tuple[str, ...]) -> bool:
    if module not in AUDIT_MAY_USE_FROM_ENCRYPT:
        return False
    allowed = AUDIT_MAY_USE_FROM_ENCRYPT[module]
    return allowed is None or (bool(names) and set(names) <= allowed)


def violations(package: str) -> list[str]:
    allowed = ALLOWED[package] | STDLIB | {package}
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module, names in imported_modules(path.read_text()):
            top = module.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line}"
            if top == "encrypt" and package == "audit" and not _audit_encrypt_ok(module, names):
                bad.append(f"{where} imports {module} {', '.join(names)}".rstrip()
                           + " (audit may use encrypt.ciphers and encrypt.prepare.prepare_pixels only)")
            elif top == "shards" and package == "keys" and module not in KEYS_MAY_USE_FROM_SHARDS:
                bad.append(f"{where} imports {module} "
                           f"(keys may use only {', '.join(sorted(KEYS_MAY_USE_FROM_SHARDS))})")
            elif top not in allowed:
                bad.append(f"{where} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    assert (REPO / package / "__init__.py").exists()
    assert violations(package) == []


def test_checker_catches_a_forbidden_import(tmp_path, monkeypatch):
    fake = tmp_path / "train"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "leak.py").write_text("import os\nfrom keys.derive import DatasetKey\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert violations("train") == ["train/leak.py:2 imports keys.derive"]


def test_audit_may_take_only_prepare_pixels_beyond_the_ciphers(tmp_path, monkeypatch):
    """The one widening for audit is the encryptor's pixel preparation, not the rest of encrypt."""
    fake = tmp_path / "audit"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "ok.py").write_text("from encrypt.ciphers import shuffle\n"
                                "from encrypt.prepare import DecodeError, prepare_pixels\n")
    (fake / "leak.py").write_text("from encrypt.prepare import decode_source\n"
                                  "from encrypt import job\n"
                                  "import encrypt.geometry\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    only = " (audit may use encrypt.ciphers and encrypt.prepare.prepare_pixels only)"
    assert violations("audit") == ["audit/leak.py:1 imports encrypt.prepare decode_source" + only,
                                   "audit/leak.py:2 imports encrypt.job" + only,
                                   "audit/leak.py:3 imports encrypt.geometry" + only]


def test_no_unkeyed_randomness_in_keyed_code():
    """random / numpy.random must never produce anything keyed."""
    for package in ("keys", "encrypt"):
        for path in (REPO / package).rglob("*.py"):
            src = path.read_text()
            for _, module, _ in imported_modules(src):
                assert module.split(".")[0] != "random", f"{path} imports random"
            assert "np.random" not in src and "numpy.random" not in src, f"{path} uses numpy.random"
