"""Passphrase precedence through the real CLI: flag file > $PATCHVEIL_PASSPHRASE_FILE >
$PATCHVEIL_PASSPHRASE > prompt, for the passphrase and for change-passphrase's new one.

Each pair gives both sources different passphrases: the keystore must be sealed under the
higher one, so `info` with only the lower one fails (wrong passphrase) and with the higher
one works. Why: a leftover environment variable once silently beat an explicit flag."""
from __future__ import annotations

import shutil
from itertools import combinations
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keys.cli import cli
PRECEDENCE = "x"

SOURCES = ("flag", "file-env", "env", "prompt")  # highest first
SECRETS = {"flag": "Ibex-from-the-flag-3301", "file-env": "Lynx-from-the-file-env-4410",
           "env": "Otter-from-the-env-5529", "prompt": "Heron-from-the-prompt-6638",
           "old": "Walrus-the-old-one-7747"}
PAIRS = list(combinations(SOURCES, 2))  # (higher, lower); the prompt is never the higher
CLEAN = {"PATCHVEIL_PASSPHRASE": None, "PATCHVEIL_PASSPHRASE_FILE": None, "PATCHVEIL_KEYSTORE": None,
         "PATCHVEIL_NEW_PASSPHRASE": None, "PATCHVEIL_NEW_PASSPHRASE_FILE": None}


def run(args: list[str], env: dict[str, str | None], prompt: str | None, monkeypatch) -> Result:
    """Invoke dataset-keys; the hidden prompt answers `prompt` (None: asking fails the test)."""
    def getpass(label: str = "") -> str:
        assert prompt is not None, f"prompted ({label!r}) although a higher source was given"
        return prompt

    monkeypatch.setattr("getpass.getpass", getpass)
    result = CliRunner().invoke(cli, args, env={**CLEAN, **env})
    for secret in SECRETS.values():
        assert secret not in result.output and secret not in result.stderr
    return result


def given(sources: tuple[str, ...], tmp_path: Path, new: bool = False) -> tuple[list[str], dict, str | None]:
    """argv, environment and prompt answer that supply a passphrase from each of `sources`."""
    args: list[str] = []
    env: dict[str, str] = {}
    prompt = None
    tag = "NEW_" if new else ""
    for source in sources:
        secret = SECRETS[source]
        if source == "flag":
            path = tmp_path / f"{tag}flag.txt"
            path.write_text(secret + "\n")
            args += ["--new-passphrase-file" if new else "--passphrase-file", str(path)]
        elif source == "file-env":
            path = tmp_path / f"{tag}named.txt"
            path.write_text(secret + "\n")
            env[f"PATCHVEIL_{tag}PASSPHRASE_FILE"] = str(path)
        elif source == "env":
            env[f"PATCHVEIL_{tag}PASSPHRASE"] = secret
        else:
            prompt = secret
    return args, env, prompt


def opens_with(store: Path, source: str, tmp_path: Path, monkeypatch) -> bool:
    args, env, prompt = given((source,), tmp_path / "alone")
    result = run(["info", "--keystore", str(store), *args], env, prompt, monkeypatch)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "wrong passphrase" in result.stderr, result.stderr
    return result.exit_code == 0


@pytest.fixture()
def scratch(tmp_path) -> Path:
    (tmp_path / "alone").mkdir()
    return tmp_path


@pytest.mark.parametrize("higher, lower", PAIRS, ids=[f"{h}>{l}" for h, l in PAIRS])
def test_init_seals_under_the_higher_source(scratch, monkeypatch, higher, lower):
    store = scratch / "keys"
    args, env, prompt = given((higher, lower), scratch)
    result = run(["init", "--keystore", str(store), *args], env, None, monkeypatch)  # never prompted
    assert result.exit_code == 0, result.output
    assert opens_with(store, higher, scratch, monkeypatch)
    assert not opens_with(store, lower, scratch, monkeypatch)


@pytest.fixture(scope="module")
def sealed_by_env(tmp_path_factory) -> Path:
    """One keystore sealed under the `old` secret, copied for each change-passphrase case."""
    store = tmp_path_factory.mktemp("pp") / "keys"
    result = CliRunner().invoke(cli, ["init", "--keystore", str(store)],
                                env={**CLEAN, "PATCHVEIL_PASSPHRASE": SECRETS["old"]})
    assert result.exit_code == 0, result.output
    return store


@pytest.mark.parametrize("higher, lower", PAIRS, ids=[f"{h}>{l}" for h, l in PAIRS])
def test_change_passphrase_takes_the_higher_new_source(scratch, monkeypatch, sealed_by_env, higher, lower):
    store = scratch / "keys"
    shutil.copytree(sealed_by_env, store)
    args, env, prompt = given((higher, lower), scratch, new=True)
    env = {**env, "PATCHVEIL_PASSPHRASE": SECRETS["old"]}  # the current one; no prompt is answered
    result = run(["change-passphrase", "--keystore", str(store), *args], env, None, monkeypatch)
    assert result.exit_code == 0, result.output
    assert opens_with(store, higher, scratch, monkeypatch)
    assert not opens_with(store, lower, scratch, monkeypatch)


def test_an_empty_file_variable_is_refused(tmp_path, monkeypatch):
    result = run(["info", "--keystore", str(tmp_path)], {"PATCHVEIL_PASSPHRASE_FILE": ""}, None, monkeypatch)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: $PATCHVEIL_PASSPHRASE_FILE: is set but names no file"


HELP_COMMANDS = [["init"], ["info"], ["export-public"], ["log"], ["checkpoint"], ["rotate"],
                 ["change-passphrase"], ["destroy"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: c[0])
def test_every_help_states_the_one_rule(command):
    text = " ".join(CliRunner().invoke(cli, [*command, "--help"]).output.split())
    assert PRECEDENCE in text
    if command == ["change-passphrase"]:
        assert "--new-passphrase-file FILE, else the file named by $PATCHVEIL_NEW_PASSPHRASE_FILE, " \
               "else $PATCHVEIL_NEW_PASSPHRASE, else a hidden prompt" in text


def test_encrypt_dataset_help_states_the_same_rule():
    from encrypt.cli import cli as encrypt_cli

    for command in ("imagefolder", "coco", "decrypt", "forget"):
        text = " ".join(CliRunner().invoke(encrypt_cli, [command, "--help"]).output.split())
        assert PRECEDENCE in text, command
