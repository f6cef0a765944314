"""Merge one benchmark section into the measured-risk file the encrypt job reads.

Every section is stored with the exact command that produced it, so each figure printed by
`encrypt-dataset` (encrypt/risk.py) and quoted in docs/privacy.md traces to a recorded run.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "encrypt" / "measured_risk.json"


def command_line() -> str:
    """The command as typed from the repository root (script path relative to it)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in ["python", str(script), *sys.argv[1:]])


def merge(path: Path | str, name: str, section: dict, **provenance) -> None:
    """Replace section `name` of the file at `path` (created if missing), stamped with its run."""
    path = Path(path)
    with open(path.with_suffix(".lock"), "w") as lock:  # two benchmarks may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(path, name, section, provenance)


def restate(path: Path | str, name: str, fields: dict) -> None:
    """Replace `fields` of section `name`, derived from its recorded figures by code (e.g. a
    rule applied anew), keeping the measurement's command and date and adding this command's."""
    path = Path(path)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text())
        section = data["sections"][name]
        section.update(fields)
        section["restated_by"] = {"command": command_line(),
                                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                  "fields": sorted(fields)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


def _merge(path: Path, name: str, section: dict, provenance: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("about", "Written by the privacy benchmarks (--results); read by encrypt/risk.py. "
                             "Do not edit by hand: rerun the recorded command.")
    sections = data.setdefault("sections", {})
    sections[name] = {"command": command_line(),
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                                 f"{provenance.pop('threads', '?')}",
                      **provenance, **section}
    data["sections"] = dict(sorted(sections.items()))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
