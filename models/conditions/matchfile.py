"""Reader for note-level score-to-performance alignments in the ``.match`` format (version 1.0.0).

The Vienna 4x22 corpus (CPJKU rematch) gives, for every performance, one line per
score note with the performance note it was played as::

    snote(n12,[F,#],4,1:2,0,5/16,1.0000,2.2500,[v1,staff1])-note(n11,66,2916,5194,58,0,0).
    snote(n356,[A,#],4,16:2,1/16,1/16,31.2500,31.5000,[v2,staff1])-deletion.
    insertion-note(n50,52,11648,12619,1,0,0).
    sustain(2236,12).

``snote(Anchor, [Step, Modifier], Octave, Bar:Beat, Offset, Duration, OnsetInBeats,
OffsetInBeats, [Attributes])`` — the anchor is the score note's id (the MusicXML
``<note id=…>``), the onset in beats counts beats of the time signature from the
first downbeat (a pickup is negative); ``note(Id, MidiPitch, Onset, Offset,
Velocity, Channel, Track)`` has onset/offset in MIDI ticks; ``info(midiClockUnits,
U)`` and ``info(midiClockRate, R)`` (microseconds per quarter) turn ticks into
seconds: ``t = tick * R / 1e6 / U``.  ``sustain``/``soft`` give pedal controller
values (CC64 / CC67) at a tick.  Only the standard library and numpy are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

_STEP = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MOD = {"n": 0, "": 0, "#": 1, "b": -1, "x": 2, "##": 2, "bb": -2}

_SNOTE = re.compile(
    r"snote\((?P<anchor>[^,]+),\[(?P<step>[A-Ga-g]),(?P<mod>[^\]]*)\],(?P<octave>-?\d+),"
    r"(?P<bar>-?\d+):(?P<beat>-?\d+),(?P<boff>[^,]+),(?P<dur>[^,]+),(?P<on_b>[^,]+),(?P<off_b>[^,]+),"
    r"\[(?P<attrs>[^\]]*)\]\)")
_NOTE = re.compile(r"note\((?P<id>[^,]+),(?P<pitch>-?\d+),(?P<on>-?\d+),(?P<off>-?\d+),(?P<vel>-?\d+),"
                   r"(?P<ch>-?\d+),(?P<tr>-?\d+)\)")
_CTRL = re.compile(r"^(?P<kind>sustain|soft)\((?P<t>-?\d+),(?P<v>-?\d+)\)\.?\s*$")
_INFO = re.compile(r"^info\((?P<key>[^,]+),(?P<value>.*)\)\.?\s*$")
_PROP = re.compile(r"^scoreprop\((?P<key>[^,]+),(?P<value>[^,]+),")


class MatchError(ValueError):
    """A .match file that cannot be read; the message names the file and line."""


def _frac(text: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a number or fraction: {text!r}") from exc


@dataclass
class PerfNote:
    """A performed note: MIDI pitch, onset/offset ticks, velocity."""

    id: str
    pitch: int
    onset_tick: int
    offset_tick: int
    velocity: int


@dataclass
class ScoreNote:
    """A score note of an ``snote(...)`` line."""

    anchor: str
    step: str
    modifier: str
    octave: int
    bar: int
    beat: int
    beat_offset: Fraction
    duration: Fraction
    onset_beats: float
    offset_beats: float
    attributes: tuple[str, ...]

    @property
    def pitch(self) -> int:
        """MIDI pitch of the spelled note (C4 = 60)."""
        return 12 * (self.octave + 1) + _STEP[self.step.upper()] + _MOD.get(self.modifier, 0)

    @property
    def grace(self) -> bool:
        return "grace" in self.attributes


@dataclass
class MatchLine:
    """One alignment line: a score note played (``perf`` set), deleted (``perf`` None), or an inserted note (``score`` None)."""

    score: ScoreNote | None
    perf: PerfNote | None


@dataclass
class MatchFile:
    path: str
    info: dict[str, str]
    score_props: dict[str, str]
    lines: list[MatchLine]
    sustain: list[tuple[int, int]] = field(default_factory=list)  # (tick, CC64 value)
    soft: list[tuple[int, int]] = field(default_factory=list)     # (tick, CC67 value)

    @property
    def clock_units(self) -> int:
        return int(self.info.get("midiClockUnits", 480))

    @property
    def clock_rate(self) -> int:
        """Microseconds per quarter note."""
        return int(self.info.get("midiClockRate", 500000))

    def seconds(self, tick: float) -> float:
        return float(tick) * self.clock_rate / 1e6 / self.clock_units

    @property
    def matched(self) -> list[tuple[ScoreNote, PerfNote]]:
        """Score notes that were played, with their performance notes."""
        return [(l.score, l.perf) for l in self.lines if l.score is not None and l.perf is not None]

    @property
    def deletions(self) -> list[ScoreNote]:
        return [l.score for l in self.lines if l.score is not None and l.perf is None]

    @property
    def insertions(self) -> list[PerfNote]:
        return [l.perf for l in self.lines if l.score is None and l.perf is not None]

    @property
    def beats_per_quarter(self) -> float:
        """Beats of the time signature per quarter note (6/8: 2, 2/4: 1, 2/2: 0.5)."""
        ts = self.score_props.get("timeSignature", "4/4")
        try:
            return int(ts.split("/")[1]) / 4.0
        except (IndexError, ValueError):
            return 1.0

    def pedal_events(self) -> list[tuple[float, int]]:
        """Sustain pedal as (seconds, CC64 value), with repeated values dropped."""
        out: list[tuple[float, int]] = []
        for t, v in sorted(self.sustain):
            if not out or out[-1][1] != v:
                out.append((self.seconds(t), int(v)))
        return out


def parse_match(text: str, path: str = "<string>") -> MatchFile:
    """Parse the text of a match file (version 1.0.0 lines; unknown lines are ignored)."""
    info: dict[str, str] = {}
    props: dict[str, str] = {}
    lines: list[MatchLine] = []
    sustain: list[tuple[int, int]] = []
    soft: list[tuple[int, int]] = []
    for k, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("%") or line.startswith("#"):
            continue
        try:
            if line.startswith("snote("):
                m = _SNOTE.match(line)
                if not m:
                    raise ValueError("malformed snote(...)")
                s = ScoreNote(m["anchor"].strip(), m["step"], m["mod"].strip(), int(m["octave"]), int(m["bar"]),
                              int(m["beat"]), _frac(m["boff"]), _frac(m["dur"]), float(m["on_b"]), float(m["off_b"]),
                              tuple(a.strip() for a in m["attrs"].split(",") if a.strip()))
                rest = line[m.end():]
                if rest.startswith("-note("):
                    n = _NOTE.match(rest[1:])
                    if not n:
                        raise ValueError("malformed note(...) after snote")
                    lines.append(MatchLine(s, _perf(n)))
                elif rest.startswith("-deletion"):
                    lines.append(MatchLine(s, None))
                else:
                    raise ValueError(f"unknown alignment after snote: {rest[:30]!r}")
            elif line.startswith("insertion-note("):
                n = _NOTE.match(line[len("insertion-"):])
                if not n:
                    raise ValueError("malformed insertion-note(...)")
                lines.append(MatchLine(None, _perf(n)))
            elif line.startswith(("sustain(", "soft(")):
                c = _CTRL.match(line)
                if not c:
                    raise ValueError(f"malformed {line.split('(')[0]}(...)")
                (sustain if c["kind"] == "sustain" else soft).append((int(c["t"]), int(c["v"])))
            elif line.startswith("info("):
                i = _INFO.match(line)
                if i:
                    info[i["key"].strip()] = i["value"].strip()
            elif line.startswith("scoreprop("):
                p = _PROP.match(line)
                if p:
                    props.setdefault(p["key"].strip(), p["value"].strip())
        except ValueError as exc:
            raise MatchError(f"{path}:{k}: {exc}: {line[:80]}") from None
    version = info.get("matchFileVersion", "1.0.0")
    if not version.startswith("1."):
        raise MatchError(f"{path}: match file version {version} is not supported (this reader knows 1.x)")
    return MatchFile(str(path), info, props, lines, sustain, soft)


def _perf(n: re.Match) -> PerfNote:
    return PerfNote(n["id"].strip(), int(n["pitch"]), int(n["on"]), int(n["off"]), int(n["vel"]))


def read_match(path: str | Path) -> MatchFile:
    p = Path(path)
    if not p.is_file():
        raise MatchError(f"{p}: no such match file")
    return parse_match(p.read_text(encoding="utf-8", errors="replace"), str(p))
