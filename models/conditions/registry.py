"""The evaluation conditions by name, and how their retrieval pools are drawn.

| name | what | pool |
|---|---|---|
| ``paper`` | the paper's protocol: corpus test split, MuseScore_General, tempo 1.0 | corpus |
| ``hard`` | ``paper`` on the romantic/modern solo-piano test pieces | corpus |
| ``vienna`` | 88 real performances (Vienna 4x22), MuseScore_General, dry | one set per pianist |
| ``vienna_realistic`` | the same performances on the Salamander Grand in a random scene | one set per pianist |
| ``vienna_schubert`` / ``vienna_schubert_realistic`` | only Schubert D783/15 (outside the reserved test repertoire) | one set per pianist |
| ``realistic`` | test split, synthetic concert pianist, Salamander Grand, scene | all takes |
| ``realistic_hard`` | ``realistic`` on the romantic/modern solo-piano test pieces | all takes |
| ``realistic_valid`` | valid split, as ``realistic`` — **the condition to choose checkpoints on** | all takes |

Built conditions live under ``data/conditions/<folder>`` (``python -m
scorestream.models.conditions build NAME``).  Checkpoint choice may use
``realistic_valid`` and ``vienna_schubert*``; the others are reported only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .realistic import is_hard
from .store import DEFAULT_ROOT


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str                              # "corpus" (paper protocol on data/corpus) or "built"
    folder: str = ""                       # built: data/conditions/<folder>
    piece_filter: Callable[[str], bool] | None = None
    description: str = ""
    selection_ok: bool = False             # may be used to choose checkpoints


def _schubert(pid: str) -> bool:
    return pid.startswith("Schubert_D783")


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("paper", "corpus", description="corpus test split, held-out timbre MuseScore_General, tempo 1.0"),
    Condition("hard", "corpus", piece_filter=is_hard,
              description="paper condition on the romantic/modern solo-piano test pieces"),
    Condition("vienna", "built", "vienna", description="Vienna 4x22: 88 real performances, MuseScore_General, dry"),
    Condition("vienna_realistic", "built", "vienna_realistic",
              description="Vienna 4x22 on the Salamander Grand in random rooms, noise, codecs"),
    Condition("vienna_schubert", "built", "vienna", _schubert, "Vienna 4x22, Schubert D783/15 only (not in the reserved test)",
              selection_ok=True),
    Condition("vienna_schubert_realistic", "built", "vienna_realistic", _schubert,
              "Vienna 4x22 realistic, Schubert D783/15 only", selection_ok=True),
    Condition("realistic", "built", "realistic", description="test split: concert pianist model, Salamander Grand, scene"),
    Condition("realistic_hard", "built", "realistic", is_hard, "realistic on the romantic/modern solo-piano test pieces"),
    Condition("realistic_valid", "built", "realistic_valid", description="valid split, as realistic (choose checkpoints here)",
              selection_ok=True),
)}


def get(name: str) -> Condition:
    if name not in CONDITIONS:
        raise KeyError(f"unknown condition {name!r}; choose one of {', '.join(CONDITIONS)}")
    return CONDITIONS[name]


def folder_of(cond: Condition, root: str | Path | None = None) -> Path:
    return Path(root or DEFAULT_ROOT) / cond.folder
