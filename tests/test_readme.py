"""README.md's examples run as written on the shipped sample and print what their comments say.

The README marks each runnable block with ``<!-- runs-in-tests -->`` (invisible when
rendered). Each block runs in its own ``bash`` from the repository root, in README order, the
way a new user pastes it into a terminal: the blocks share only the files they write under
``~``. Only paths are adapted: ``HOME`` is a temporary folder (the README writes under
``~/pv-*``) and ``.venv/bin/activate`` is the activate script of the venv running the tests.
Nothing else is given: no ``PATCHVEIL_*`` variable comes from outside, so the data owner's
block must set its own keystore and passphrase and the ML engineer's and the auditor's blocks
must work with none.

Every command must exit 0. A comment ``# → TEXT`` (after the command, or on the line below
it) is what the command prints: TEXT must appear in its output, ``…`` standing for anything.
Beyond the README's words the test checks what the outcomes mean: every sample image
encrypted (none skipped), a top-1 above chance, all five audit checks passed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = "<!-- runs-in-tests -->"
ARROW = "→"
SAMPLE = REPO / "examples" / "fashion-mnist-sample"
CHANCE_TOP1 = 0.10  # ten classes


@dataclass
class Command:
    text: str  # the shell text as written, continuation lines included, comments removed
    expect: list[str] = field(default_factory=list)  # each `# → TEXT` said about it

    @property
    def words(self) -> list[str]:
        return self.text.replace("\\\n", " ").split()


@dataclass
class Block:
    line: int  # where the block starts in README.md, for messages
    commands: list[Command]


def _split_comment(line: str) -> tuple[str, str | None]:
    """Shell text and its trailing comment: the first `#` outside quotes after a blank or at
    the start of the line."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def parse_commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []  # physical lines of a command continued with a backslash
    for line in lines:
        code, comment = _split_comment(line)
        if code:
            pending.append(code)
            if code.endswith("\\"):
                continue
            commands.append(Command("\n".join(pending)))
            pending = []
        if comment is not None and comment.startswith(ARROW):
            assert commands and not pending, f"README: {line!r}: a `# {ARROW}` line with no command before it"
            commands[-1].expect.append(comment[len(ARROW):].strip())
    assert not pending, f"README: a command ends with a backslash: {pending[-1]!r}"
    return commands


def runnable_blocks(text: str) -> list[Block]:
    """The fenced blocks that directly follow the marker, in order."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        start = i + 1
        assert start < len(lines) and lines[start].startswith("```"), \
            f"README.md:{i + 1}: {MARKER} must be followed directly by a fenced code block"
        end = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(start + 1, parse_commands(lines[start + 1:end])))
    return blocks


def expectation(text: str) -> re.Pattern:
    """`…` in a README comment stands for anything on the line."""
    return re.compile(".*?".join(re.escape(part) for part in text.split("…")))


def _venv_activate(tmp: Path) -> Path:
    """The activate script of the venv running the tests (the README's `.venv`, or the one
    CI points `make test` at); a stand-in that puts this interpreter's scripts on PATH if the
    interpreter is not in a venv."""
    script = Path(sys.executable).parent / "activate"
    if script.is_file():
        return script
    shim = tmp / "activate"
    shim.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return shim


def _script(block: Block, logs: Path, index: int, activate: Path) -> str:
    """The block as bash: each command's output and exit status to its own file; stop at the
    first failure, as a reader would."""
    parts = []
    for n, command in enumerate(block.commands):
        text = re.sub(r"(?<![\w/.~-])\.venv/bin/activate\b", f"'{activate}'", command.text)
        out, rc = logs / f"{index}-{n}.out", logs / f"{index}-{n}.rc"
        parts.append(f"{{\n{text}\n}} >'{out}' 2>&1 </dev/null; echo $? >'{rc}'\n"
                     f"[ \"$(cat '{rc}')\" = 0 ] || exit 1\n")
    return "".join(parts)


def _run_blocks(blocks: list[Block], home: Path, logs: Path) -> list[list[tuple[int, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHVEIL_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    activate = _venv_activate(logs)
    results = []
    for index, block in enumerate(blocks):
        subprocess.run(["bash", "-c", _script(block, logs, index, activate)], cwd=REPO, env=env,
                       timeout=300, check=False)
        ran = []
        for n, command in enumerate(block.commands):
            rc_file = logs / f"{index}-{n}.rc"
            if not rc_file.is_file():
                break
            ran.append((int(rc_file.read_text()), (logs / f"{index}-{n}.out").read_text(errors="replace")))
        results.append(ran)
    return results


def _tail(output: str, chars: int = 3000) -> str:
    return output if len(output) <= chars else "…" + output[-chars:]


def _find(blocks: list[Block], *words: str) -> list[tuple[int, int, Command]]:
    return [(b, n, c) for b, block in enumerate(blocks) for n, c in enumerate(block.commands)
            if c.words[:len(words)] == list(words)]


# ---------------------------------------------------------------------------------------------
# The parser itself (fast): what the README test relies on to find and read commands.

def test_parser_reads_commands_continuations_and_outcomes():
    text = "\n".join([
        "intro", MARKER, "```sh",
        "export A='x # not a comment'   # set A",
        "tool run a \\",
        "    --flag 1           # → wrote 3 things",
        "tool show",
        "# → line one … end",
        "```", "```", "not run", "```",
    ])
    [block] = runnable_blocks(text)
    assert [c.text for c in block.commands] == [
        "export A='x # not a comment'", "tool run a \\\n    --flag 1", "tool show"]
    assert [c.expect for c in block.commands] == [[], ["wrote 3 things"], ["line one … end"]]
    assert block.commands[1].words == ["tool", "run", "a", "--flag", "1"]
    assert expectation("line one … end").search("line one and then the end")
    assert not expectation("line one … end").search("line two … end")
    with pytest.raises(AssertionError):
        runnable_blocks(f"{MARKER}\n\ntext\n")


def test_readme_marks_one_example_per_role_on_the_sample():
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 3, "README: one runnable block per role (data owner, ML engineer, auditor)"
    owner, engineer, auditor = blocks
    [(_, _, encrypt)] = _find([owner], "encrypt-dataset", "imagefolder")
    assert encrypt.words[2] == "examples/fashion-mnist-sample", "the data owner's example runs on the shipped sample"
    for words in (("dataset-keys", "init"), ("dataset-keys", "export-public")):
        assert _find([owner], *words), f"the data owner's block has no `{' '.join(words)}`"
    for words in (("train-encrypted", "classify"), ("train-encrypted", "evaluate")):
        assert _find([engineer], *words), f"the ML engineer's block has no `{' '.join(words)}`"
    [(_, _, verify)] = _find([auditor], "audit-shards", "verify")
    assert "--custody-log" in verify.words and "--public-key" in verify.words, \
        "the auditor checks the release against the identity and the custody log"
    # An ML engineer and an auditor hold no key: their blocks never name the keystore or passphrase.
    for block in (engineer, auditor):
        for command in block.commands:
            assert "PATCHVEIL_" not in command.text and "--passphrase-file" not in command.text, command.text
    # Secrets never in argv: the passphrase comes from the environment, never an option's value.
    for block in blocks:
        for command in block.commands:
            assert "--passphrase " not in command.text and "--passphrase=" not in command.text, command.text
    # Every command whose outcome matters says what it prints.
    for _, _, command in (_find(blocks, "encrypt-dataset") + _find(blocks, "train-encrypted")
                          + _find(blocks, "audit-shards") + _find(blocks, "dataset-keys")):
        assert command.expect, f"README: `{command.words[:2]}` has no `# {ARROW} …` outcome"


# ---------------------------------------------------------------------------------------------
# The README run end to end.

@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path):
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    home, logs = tmp_path / "home", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    results = _run_blocks(blocks, home, logs)

    outputs: dict[tuple[int, int], str] = {}
    for b, (block, ran) in enumerate(zip(blocks, results)):
        for n, command in enumerate(block.commands):
            where = f"README.md block at line {block.line}, command {n + 1}: {command.text}"
            assert n < len(ran), f"{where}\ndid not run"
            rc, output = ran[n]
            assert rc == 0, f"{where}\nexited {rc}:\n{_tail(output)}"
            for text in command.expect:
                assert expectation(text).search(output), \
                    f"{where}\ndid not print what the README says ({text!r}):\n{_tail(output)}"
            outputs[b, n] = output

    # What the outcomes mean, beyond the README's words.
    [(b, n, _)] = _find(blocks, "encrypt-dataset", "imagefolder")
    written = re.search(r"^wrote (\d+) images in (\d+) shards", outputs[b, n], re.M)
    assert written and int(written.group(1)) == len(list(SAMPLE.rglob("*.png"))), _tail(outputs[b, n])
    assert not re.search(r"^skipped ", outputs[b, n], re.M), _tail(outputs[b, n])

    [(b, n, _)] = _find(blocks, "train-encrypted", "classify")
    best = re.search(r"best val top-1 ([0-9.]+)", outputs[b, n])
    assert best and float(best.group(1)) > CHANCE_TOP1 + 0.05, _tail(outputs[b, n])

    [(b, n, _)] = _find(blocks, "train-encrypted", "evaluate")
    scores = json.loads(outputs[b, n].strip().splitlines()[-1])
    assert scores["samples"] == len(list((SAMPLE / "val").rglob("*.png"))) and scores["split"] == "val"
    assert scores["top1"] > CHANCE_TOP1 + 0.05, scores

    [(b, n, _)] = _find(blocks, "audit-shards", "verify")
    assert re.search(r"^verified: 5 of 5 checks passed$", outputs[b, n], re.M), _tail(outputs[b, n])
    assert re.search(r"^\s+custody-log\s+PASS", outputs[b, n], re.M), _tail(outputs[b, n])
