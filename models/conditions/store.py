"""On-disk form of a built evaluation condition and its reader.

A condition is a set of *takes* (one performance of one piece: a spectrogram and its
audio–sheet pairs) and the strips they point into::

    data/conditions/<name>/
        condition.json          what was built, how, and the take table (piece, set, labels)
        takes/<take>.npz        spec (T, 92) float16, frame, time, strip_x, strip_y, system
        strips/<piece>.png/.json   unrolled strips of scores engraved for the condition
                                   (takes of corpus pieces point at the corpus's own e0_strip.png)

``set``: takes in one set are evaluated together (one retrieval pool); the Vienna
conditions have one set per pianist so that a pool never holds two copies of a snippet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from scorestream.core.npz import save_npz
from scorestream.core.strip import Strip

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "conditions"


@dataclass
class TakeInfo:
    id: str
    piece: str
    set: str
    strip: str          # path of the strip PNG (absolute, or relative to the condition folder)
    labels: dict        # corpus, composer, split, pianist, scene …


class _StripView:
    def __init__(self, image: np.ndarray):
        self.image = image


@lru_cache(maxsize=64)
def _load_strip(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


class TakeView:
    """A take with the interface ``models.evaluate.embed_corpus_selection`` expects of a corpus piece."""

    def __init__(self, folder: Path, info: TakeInfo):
        self.folder = folder
        self.info = info
        self.id = info.id

    def _npz(self):
        return np.load(self.folder / "takes" / f"{self.info.id}.npz")

    def performance(self, j: int = 0) -> tuple[np.ndarray, np.ndarray]:
        z = self._npz()
        return z["spec"].astype(np.float32), z["time"].astype(np.float64)

    def pairs(self) -> dict[str, np.ndarray]:
        z = self._npz()
        return {k: z[k] for k in ("frame", "time", "strip_x", "strip_y", "system")}

    def strip_path(self) -> str:
        p = Path(self.info.strip)
        return str(p if p.is_absolute() else self.folder / p)

    def strip(self, e: int = 0) -> _StripView:
        return _StripView(_load_strip(self.strip_path()))


class ConditionData:
    """A built condition folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "condition.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a built condition (no condition.json)")
        self.meta = json.loads(meta_path.read_text())
        self.takes = [TakeView(self.folder, TakeInfo(**t)) for t in self.meta["takes"]]

    @property
    def name(self) -> str:
        return self.meta["name"]

    def sets(self) -> dict[str, list[TakeView]]:
        out: dict[str, list[TakeView]] = {}
        for t in self.takes:
            out.setdefault(t.info.set, []).append(t)
        return out


class ConditionWriter:
    """Writes a condition folder take by take; a take already written is skipped (resumable)."""

    def __init__(self, folder: str | Path, name: str, description: str, settings: dict):
        self.folder = Path(folder)
        (self.folder / "takes").mkdir(parents=True, exist_ok=True)
        (self.folder / "strips").mkdir(parents=True, exist_ok=True)
        self.meta = {"name": name, "description": description, "settings": settings, "takes": []}
        old = self.folder / "condition.json"
        self._done: dict[str, dict] = {}
        if old.is_file():
            prev = json.loads(old.read_text())
            if prev.get("settings") == settings:
                self._done = {t["id"]: t for t in prev["takes"]}

    def has(self, take_id: str) -> bool:
        return take_id in self._done and (self.folder / "takes" / f"{take_id}.npz").is_file()

    def keep(self, take_id: str) -> None:
        self.meta["takes"].append(self._done[take_id])

    def add(self, info: TakeInfo, spec: np.ndarray, pairs: dict[str, np.ndarray]) -> None:
        save_npz(self.folder / "takes" / f"{info.id}.npz", spec=np.asarray(spec, np.float16),
                 frame=np.asarray(pairs["frame"], np.int64), time=np.asarray(pairs["time"], np.float64),
                 strip_x=np.asarray(pairs["strip_x"], np.float64), strip_y=np.asarray(pairs["strip_y"], np.float64),
                 system=np.asarray(pairs["system"], np.int64))
        self.meta["takes"].append(info.__dict__.copy())
        self.flush()

    def save_strip(self, piece: str, strip: Strip) -> str:
        Image.fromarray(strip.image).save(self.folder / "strips" / f"{piece}.png")
        (self.folder / "strips" / f"{piece}.json").write_text(json.dumps(strip.to_json()))
        return f"strips/{piece}.png"

    def flush(self, **extra) -> None:
        self.meta.update(extra)
        tmp = self.folder / "condition.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.folder / "condition.json")
