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
    "shards": {"numpy", "PIL", "webdataset", "cryptography", "click", "tqdm"},
    "encrypt": {"keys", "shards", "numpy", "PIL", "ray", "click", "tqdm"},
    "train": {"shards", "torch", "timm", "webdataset", "numpy", "PIL", "scipy", "pycocotools",
              "click", "tqdm", "torchvision"},
    # The learned attacks are models: torch and timm are the auditor's tools too.
    "audit": {"keys", "shards", "encrypt", "numpy", "PIL", "scipy", "skimage", "click", "tqdm",
              "torch", "timm"},
}
# keys sits below the contract: it may use only the stdlib-level error root, CLI plumbing
# and utilities (atomic writes, canonical JSON, base64).
KEYS_MAY_USE_FROM_SHARDS = {"shards.errors", "shards.console", "shards.common"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) for every absolute import in a module's source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(package: str) -> list[str]:
    allowed = ALLOWED[package] | STDLIB | {package}
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_modules(path.read_text()):
            top = module.split(".")[0]
            if top == "encrypt" and package == "audit" and module not in ("encrypt", "encrypt.ciphers"):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module} (audit may use encrypt.ciphers only)")
            elif top == "shards" and package == "keys" and module not in KEYS_MAY_USE_FROM_SHARDS:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module} "
                           f"(keys may use only {', '.join(sorted(KEYS_MAY_USE_FROM_SHARDS))})")
            elif top not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
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


def test_no_unkeyed_randomness_in_keyed_code():
    """random / numpy.random must never produce anything keyed."""
    for package in ("keys", "encrypt"):
        for path in (REPO / package).rglob("*.py"):
            src = path.read_text()
            for _, module in imported_modules(src):
                assert module.split(".")[0] != "random", f"{path} imports random"
            assert "np.random" not in src and "numpy.random" not in src, f"{path} uses numpy.random"
