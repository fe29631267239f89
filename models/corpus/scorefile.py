"""Reading symbolic score files (MusicXML, compressed .mxl, Humdrum .krn).

The corpus generator only needs the score text that verovio will engrave.  For
songs we drop the voice (and any other non-keyboard part) before engraving:
the product follows piano scores, and a piano-only engraving keeps every
system small enough for the fixed-height unrolled strip the model sees.
"""

from __future__ import annotations

import re
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path

SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn")

_KEYBOARD_NAME = re.compile(
    r"piano|pianoforte|klavier|keyboard|cembalo|harpsichord|clavier|pf\.?$|organ|orgel",
    re.IGNORECASE,
)


class ScoreError(ValueError):
    """A score file that cannot be read or engraved; the message says why."""


def read_score_text(path: str | Path) -> tuple[str, str]:
    """Return ``(text, kind)`` with kind ``"musicxml"`` or ``"humdrum"``.

    Raises :class:`ScoreError` with a readable reason for missing, empty,
    corrupt or unsupported files.
    """
    p = Path(path)
    if not p.is_file():
        raise ScoreError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        raise ScoreError(f"{p}: unsupported score format {suffix!r} (use one of {', '.join(SCORE_SUFFIXES)})")
    if p.stat().st_size == 0:
        raise ScoreError(f"{p}: file is empty")
    if suffix == ".krn":
        text = p.read_text(encoding="utf-8", errors="replace")
        if "**kern" not in text:
            raise ScoreError(f"{p}: not a Humdrum file (no **kern spine)")
        return text, "humdrum"
    if suffix == ".mxl":
        try:
            with zipfile.ZipFile(p) as zf:
                name = _mxl_rootfile(zf)
                raw = zf.read(name)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ScoreError(f"{p}: not a valid compressed MusicXML (.mxl) file: {exc}") from exc
    else:
        raw = p.read_bytes()
    text = _decode_xml(raw)
    if "<score-partwise" not in text and "<score-timewise" not in text:
        raise ScoreError(f"{p}: not a MusicXML score (no <score-partwise> root)")
    return text, "musicxml"


def _mxl_rootfile(zf: zipfile.ZipFile) -> str:
    try:
        container = ET.fromstring(zf.read("META-INF/container.xml"))
        for el in container.iter():
            if el.tag.endswith("rootfile") and el.get("full-path"):
                return el.get("full-path")  # type: ignore[return-value]
    except (KeyError, ET.ParseError):
        pass
    names = [n for n in zf.namelist() if n.endswith((".xml", ".musicxml")) and not n.startswith("META-INF")]
    if not names:
        raise KeyError("no MusicXML document inside the archive")
    return names[0]


def _decode_xml(raw: bytes) -> str:
    if raw.startswith(b"\xff\xfe") or raw.startswith(b"\xfe\xff"):
        return raw.decode("utf-16")
    return raw.decode("utf-8", errors="replace")


def keyboard_only(xml_text: str) -> str:
    """Drop every part that is not a keyboard part from a partwise MusicXML text.

    A part counts as keyboard when it is written on two or more staves or its
    name says piano/organ/harpsichord.  If no part qualifies the score is
    returned unchanged (a chorale, a string quartet: engraved as is).
    """
    try:
        root = ET.fromstring(xml_text.encode("utf-8"))
    except ET.ParseError as exc:
        raise ScoreError(f"MusicXML is not well-formed XML: {exc}") from exc
    if root.tag != "score-partwise":
        return xml_text
    part_list = root.find("part-list")
    parts = root.findall("part")
    if part_list is None or len(parts) <= 1:
        return xml_text
    names = {}
    for sp in part_list.findall("score-part"):
        names[sp.get("id")] = " ".join(
            (sp.findtext("part-name") or "", sp.findtext("part-abbreviation") or "", sp.findtext("score-instrument/instrument-name") or "")
        )
    keep = set()
    for part in parts:
        pid = part.get("id")
        staves = part.find("measure/attributes/staves")
        n_staves = int(staves.text) if staves is not None and (staves.text or "").strip().isdigit() else 1
        if n_staves >= 2 or _KEYBOARD_NAME.search(names.get(pid, "")):
            keep.add(pid)
    if not keep or len(keep) == len(parts):
        return xml_text
    for part in parts:
        if part.get("id") not in keep:
            root.remove(part)
    for el in list(part_list):
        if el.tag == "score-part" and el.get("id") not in keep:
            part_list.remove(el)
        elif el.tag == "part-group":
            part_list.remove(el)
    return ET.tostring(root, encoding="unicode")


def load_for_engraving(path: str | Path, keyboard: bool = True) -> str:
    """Score text ready for verovio's ``loadData``."""
    text, kind = read_score_text(path)
    if kind == "musicxml" and keyboard:
        text = keyboard_only(text)
    return text
