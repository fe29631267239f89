"""Data splits and the paper's test condition, defined once.

Splits are by *work* (the movements of one work share a group), drawn from a
hash of the group name with a fixed salt, so they never move when a build seed
or the set of sources changes.  The paper's test condition (Dorfer et al. 2018):
test pieces, the timbre never used in training, tempo 1.0 without rubato.
"""

from __future__ import annotations

import hashlib

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPLIT_CODE: dict[str, int] = {name: k for k, name in enumerate(SPLITS)}
_SPLIT_SALT = 12345          # fixed: splits must not move when the build seed changes
PAPER_TEMPO_MILLI = 1000     # tempo_milli of a metronomic tempo-1.0 take


def unit_hash(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from ``key`` and ``seed``."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_of(group: str, valid_fraction: float, test_fraction: float) -> str:
    """Split of a work (group): ``test`` for a ``test_fraction`` share, then ``valid``, else ``train``."""
    u = unit_hash(group, _SPLIT_SALT)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def split_code(split: str | int) -> int:
    """0/1/2 for train/valid/test (names or codes accepted)."""
    if isinstance(split, str):
        if split not in SPLIT_CODE:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return SPLIT_CODE[split]
    code = int(split)
    if not 0 <= code < len(SPLITS):
        raise ValueError(f"unknown split code {split!r}")
    return code


def tempo_milli(style: dict) -> int:
    """1000 × global tempo; exactly 1000 only for a metronomic (no rubato) tempo-1.0 take."""
    t = int(round(float(style["tempo"]) * 1000))
    if float(style.get("rubato", 0) or 0) > 0 and t == PAPER_TEMPO_MILLI:
        return PAPER_TEMPO_MILLI + 1
    return t


def is_paper_test_take(style: dict, test_timbre: str) -> bool:
    """Is a performance (its style dict) in the paper's test condition: held-out timbre, tempo 1.0, no rubato?"""
    return style.get("timbre") == test_timbre and tempo_milli(style) == PAPER_TEMPO_MILLI
