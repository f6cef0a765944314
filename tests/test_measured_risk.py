"""The risk line every job prints, the results file the benchmarks write, and docs/privacy.md
quote the same measured numbers: none of them is typed by hand, so they cannot drift."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from encrypt import risk
from shards.modes import CIPHER_MODES, NAMES

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "privacy.md").read_text()
MODES = NAMES
NUMBER = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?(?![\w.])")


def numbers(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


def doc_table(heading: str) -> dict[str, list[str]]:
    """The first markdown table after `heading`: mode (backticks stripped) → its other cells."""
    lines = DOC[DOC.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split(" (")[0].strip("`")] = cells[1:]
    return rows


def test_the_results_file_records_the_command_behind_every_section():
    results = risk.load()
    assert results["sections"], "encrypt/measured_risk.json is missing: run the benchmarks with --results"
    for name, section in results["sections"].items():
        assert section["command"].startswith("python benchmarks/") and "--results" in section["command"], name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", section["date"]) and section["rows"], name


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_prints_its_measured_figures_or_says_it_is_unmeasured(mode):
    line, figures = risk.risk_line(mode), risk.figures(mode, risk.load())
    if mode == "none":
        assert "no cipher" in line
    elif not figures:
        assert "not measured" in line
    else:  # the numbers printed are exactly the file's, nothing else
        stored = [v for v in figures.values() if isinstance(v, (int, float))]
        constants = [0.1] * ("recognizability" in figures) + [0.5] * ("membership_auc" in figures)
        assert sorted(numbers(line)) == sorted(float(v) for v in stored + constants)
        for value in stored:
            assert str(value) in line


@pytest.mark.parametrize("mode", CIPHER_MODES)
def test_the_risk_line_states_membership_once_the_gallery_is_measured(mode):
    results = risk.load()
    assert "hardened_modes/gallery" in results["sections"], "run hardened_modes.py --sections gallery --results"
    f = risk.figures(mode, results)
    line = risk.risk_line(mode, results)
    assert f"membership AUC {f['membership_auc']}" in line
    assert f"{f['histogram_reidentification']} of the time (chance {f['histogram_chance']})" in line
    without = {"sections": {k: v for k, v in results["sections"].items() if k != "hardened_modes/gallery"}}
    assert "membership" not in risk.risk_line(mode, without)
    assert "membership_auc" not in risk.figures(mode, without)


def test_a_mode_without_entries_prints_that_it_is_unmeasured():
    assert "not measured" in risk.risk_line("mix-shuffle", {"sections": {}})
    assert risk.figures("mix-shuffle", {"sections": {}}) == {}


def test_the_docs_table_is_the_rendered_results_file():
    block = DOC.split(risk.BEGIN, 1)[1].split(risk.END, 1)[0]
    assert block == "\n" + risk.markdown_table(MODES) + "\n", "rerender: python -m encrypt.risk docs/privacy.md"


def test_the_docs_headline_tables_quote_the_file():
    results = risk.load()
    verdict = doc_table("## The verdict")
    reid = doc_table("## What a cipher can hide")
    for mode in CIPHER_MODES:
        f = risk.figures(mode, results)
        if "photo_neighbour" in f:
            assert numbers(verdict[mode][0])[0] == f["photo_neighbour"], mode
        if "photo_psnr" in f:
            assert f["photo_psnr"] in numbers(verdict[mode][0]), mode
        if "ratio_to_plain" in f:
            assert numbers(verdict[mode][2])[0] == f["ratio_to_plain"], mode
        if "reidentification" in f:
            assert numbers(reid[mode][2])[0] == f["recognizability"], mode
            assert numbers(reid[mode][3])[0] == f["reidentification"], mode
            assert f"chance {f['reidentification_chance']}" in DOC


def test_a_benchmark_section_is_merged_with_its_command(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_results", REPO / "benchmarks" / "results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    monkeypatch.setattr("sys.argv", [str(REPO / "benchmarks" / "hardened_modes.py"), "--sections", "photos"])
    path = tmp_path / "measured.json"
    results.merge(path, "hardened_modes/photos", {"rows": {"shuffle": {"attack": "jigsaw", "neighbour": 0.5}}})
    results.merge(path, "hardened_modes/learned", {"rows": {}})
    results.merge(path, "hardened_modes/photos", {"rows": {"shuffle": {"attack": "jigsaw", "neighbour": 0.25}}})
    data = risk.load(path)
    assert sorted(data["sections"]) == ["hardened_modes/learned", "hardened_modes/photos"]
    assert data["sections"]["hardened_modes/photos"]["command"] == \
        "python benchmarks/hardened_modes.py --sections photos"
    assert "restores 0.25 of patch neighbours" in risk.risk_line("shuffle", data)
