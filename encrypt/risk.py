"""The privacy risk every encrypt job prints, read from what the benchmarks measured.

The figures live in encrypt/measured_risk.json, written only by the privacy benchmarks
(`--results`), each section with the command that produced it. Shipped inside the package
(package data) so an installed `encrypt-dataset` prints the same numbers as docs/privacy.md;
nothing here is typed by hand, so code, docs and output cannot drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path

from shards.modes import mode_of

RESULTS = Path(__file__).with_name("measured_risk.json")
ROW_OF_MODE = {"none": "plain"}  # the benchmarks call the no-cipher baseline "plain"


def load(path: Path | str = RESULTS) -> dict:
    """The results file, or an empty one when missing (every mode then prints as unmeasured)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def _row(results: dict, section: str, mode: str) -> dict:
    rows = results.get("sections", {}).get(section, {}).get("rows", {})
    return rows.get(ROW_OF_MODE.get(mode, mode), {})


def figures(mode: str, results: dict) -> dict:
    """The measured figures of one mode, by name (only those the file holds)."""
    photos = _row(results, "hardened_modes/photos", mode)
    learned = _row(results, "hardened_modes/learned", mode)
    accuracy = _row(results, "hardened_modes/accuracy", mode)
    out: dict = {}
    if "neighbour" in photos:
        out["photo_neighbour"] = photos["neighbour"]
        out["photo_attack"] = photos["attack"]
    if "psnr" in photos and mode_of(mode).keeps_positions:  # an inversion, not a placement attack
        out["photo_psnr"] = photos["psnr"]
        out["photo_attack"] = photos["attack"]
    if "reidentification" in learned:
        out.update(fmnist_attack=learned["attack"], recognizability=learned["recognizability"],
                   reidentification=learned["reidentification"],
                   reidentification_chance=learned["reidentification_chance"])
    if "ratio_to_plain" in accuracy:
        out["ratio_to_plain"] = accuracy["ratio_to_plain"]
    out.update(_membership(results, mode))
    return out


def _membership(results: dict, mode: str) -> dict:
    """What the histogram matcher (no attack, no key) tells of membership: its AUC, and its
    re-identification against the largest same-class public gallery measured."""
    section = results.get("sections", {}).get("hardened_modes/gallery", {})
    row = _row(results, "hardened_modes/gallery", mode)
    if "membership_auc" not in row:
        return {}
    out = {"membership_auc": row["membership_auc"]}
    same_class = row.get("histogram", {}).get("same class", {})
    if same_class:
        size = max(same_class, key=int)
        out.update(histogram_reidentification=same_class[size], histogram_gallery=int(size),
                   histogram_chance=section["chance"][size])
    return out


def risk_line(mode: str, results: dict | None = None) -> str:
    """One sentence of measured figures for `mode`; numbers exactly as stored in the file."""
    if not mode_of(mode).encrypted:
        return "no cipher: plain images, for baselines only"
    f = figures(mode, load() if results is None else results)
    parts = []
    if "photo_neighbour" in f:
        parts.append(f"on photos, {f['photo_attack']} restores {f['photo_neighbour']} of patch neighbours")
    if "photo_psnr" in f:
        parts.append(f"on photos, positions are kept and {f['photo_attack']} gives a {f['photo_psnr']} dB picture")
    if "reidentification" in f:
        parts.append(f"on Fashion-MNIST, {f['fmnist_attack']} gives pictures recognizable {f['recognizability']} "
                     f"of the time (chance 0.1) and re-identifies {f['reidentification']} of items among "
                     f"their class (chance {f['reidentification_chance']})")
    if "ratio_to_plain" in f:
        parts.append(f"training reaches {f['ratio_to_plain']} of plain top-1 (Fashion-MNIST)")
    if "membership_auc" in f:
        text = (f"membership: whoever holds an image tests whether it is in the release by its pixel "
                f"histogram, membership AUC {f['membership_auc']} (0.5: a coin toss)")
        if "histogram_reidentification" in f:
            text += (f", and picks it out of {f['histogram_gallery']} Fashion-MNIST images of its class "
                     f"{f['histogram_reidentification']} of the time (chance {f['histogram_chance']})")
        parts.append(text)
    if not parts:
        return "privacy not measured for this mode (no entry in encrypt/measured_risk.json)"
    return "measured: " + "; ".join(parts)


def markdown_table(modes, results: dict | None = None) -> str:
    """The docs/privacy.md table of the same figures, with the command behind each column."""
    results = load() if results is None else results
    rows = ["| mode | neighbour acc., photos | PSNR, photos (dB) | recognizability, Fashion-MNIST "
            "| re-identification (chance) | top-1 / plain | membership AUC, histogram |",
            "|---|---|---|---|---|---|---|"]
    for mode in modes:
        f = figures(mode, results)
        unmeasured = "not measured"
        reid = f"{f['reidentification']} ({f['reidentification_chance']})" if "reidentification" in f else unmeasured
        rows.append(f"| `{mode}` | {f.get('photo_neighbour', '–')} | {f.get('photo_psnr', '–')} | "
                    f"{f.get('recognizability', unmeasured)} | {reid} | {f.get('ratio_to_plain', unmeasured)} | "
                    f"{f.get('membership_auc', unmeasured)} |")
    rows.append("")
    for name, section in sorted(results.get("sections", {}).items()):
        rows.append(f"- `{name}` ({section['date']}): `{section['command']}`")
    return "\n".join(rows)


BEGIN, END = "<!-- measured-risk:begin -->", "<!-- measured-risk:end -->"


def rewrite_docs(doc: Path | str) -> None:
    """Re-render the marked table of docs/privacy.md from the results file."""
    from shards.modes import NAMES

    doc = Path(doc)
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + BEGIN + "\n" + markdown_table(NAMES) + "\n" + END + tail)


if __name__ == "__main__":  # python -m encrypt.risk docs/privacy.md
    import sys

    rewrite_docs(sys.argv[1])
