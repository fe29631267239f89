"""``ModelInputSpec``: the model's input contract, written next to every exported model.

A model was trained on features of one kind: a spectrogram with a given sample
rate, frame rate, filterbank and compression, audio windows of a given length,
sheet crops of a given size cut from strips normalised to a given staff space.
Serving features that differ from those silently ruins retrieval, so the spec is
stored in ``NAME.json`` beside ``NAME_audio.onnx``/``NAME_sheet.onnx`` at export,
and :class:`scorestream.models.embedder.OnnxEmbedder` refuses to load a model whose
spec differs from what this installation's core computes (:meth:`ModelInputSpec.serving`).
A score library stores the spec too, so a library and a server can never combine
features and weights that disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import geometry as G
from .errors import IncompatibleModelError
from .frontend import FrontEndConfig

# Name of the spectrogram computation in core.frontend: log10(1 + x) of unit-area
# triangular log-frequency filterbank magnitudes of Hann-windowed frames, frame n
# centred on sample floor(n * sr / fps).  Change the name whenever the numbers change.
SPECTROGRAM_KIND = "log10(1+x) triangular filterbank, unit area, hann, centred floor(n*sr/fps)"


@dataclass(frozen=True)
class ModelInputSpec:
    sample_rate: int
    fps: int
    frame_size: int
    bands_per_octave: int
    fmin: float
    fmax: float
    spec_bins: int
    spectrogram: str
    audio_frames: int            # spectrogram frames per audio window (centred on the query frame)
    sheet_crop: tuple[int, int]  # strip pixels (rows, cols) of a sheet snippet
    sheet_input: tuple[int, int]  # network input (rows, cols) after box downscaling
    strip_height: int
    centre_row: int
    staff_space: float           # strip pixels between staff lines
    ink_threshold: int           # grey < this is ink
    embed_dim: int

    @classmethod
    def serving(cls, audio_frames: int, embed_dim: int, frontend: FrontEndConfig = FrontEndConfig()) -> "ModelInputSpec":
        """What this installation's core produces for a model with these window/embedding sizes."""
        return cls(
            sample_rate=frontend.sample_rate, fps=frontend.fps, frame_size=frontend.frame_size,
            bands_per_octave=frontend.bands_per_octave, fmin=float(frontend.fmin), fmax=float(frontend.fmax),
            spec_bins=frontend.n_bins, spectrogram=SPECTROGRAM_KIND, audio_frames=int(audio_frames),
            sheet_crop=(G.CROP_H, G.CROP_W), sheet_input=(G.OUT_H, G.OUT_W), strip_height=G.STRIP_HEIGHT,
            centre_row=G.CENTER_ROW, staff_space=float(G.STAFF_SPACE), ink_threshold=G.INK_THRESHOLD,
            embed_dim=int(embed_dim),
        )

    def frontend(self) -> FrontEndConfig:
        return FrontEndConfig(sample_rate=self.sample_rate, frame_size=self.frame_size, fps=self.fps,
                              bands_per_octave=self.bands_per_octave, fmin=self.fmin, fmax=self.fmax)

    def to_json(self) -> dict:
        d = asdict(self)
        d["sheet_crop"], d["sheet_input"] = list(self.sheet_crop), list(self.sheet_input)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelInputSpec":
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise IncompatibleModelError(f"model input spec lacks {sorted(missing)}")
        kw = {k: d[k] for k in names}
        kw["sheet_crop"], kw["sheet_input"] = tuple(kw["sheet_crop"]), tuple(kw["sheet_input"])
        return cls(**kw)

    def differences(self, other: "ModelInputSpec") -> list[str]:
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (abs(a - b) > 1e-9 * max(1.0, abs(a))) if isinstance(a, float) else a != b:
                out.append(f"{f.name}: {a!r} vs {b!r}")
        return out

    def require_equal(self, other: "ModelInputSpec", what: str, fix: str) -> None:
        """Raise :class:`IncompatibleModelError` naming every field that differs."""
        diff = self.differences(other)
        if diff:
            raise IncompatibleModelError(f"{what}: model input contract differs ({'; '.join(diff)}); {fix}")
