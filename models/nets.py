"""Audio and sheet-music embedding networks (training side, torch).

Two convolutional pathways map a spectrogram excerpt and a sheet-music snippet
into a shared 32-d space (Dorfer et al., TISMIR 2018).  Each pathway is

    4 x [conv3x3-BN-ELU, conv3x3-BN-ELU, maxpool 2x2]   (24, 48, 96, 96 filters)
    conv1x1 -> 32 channels, BN-ELU, flatten, dense -> embed_dim, L2 normalise

The long-context audio variant (Balke et al., 2019) puts a soft-attention
branch in front of the audio CNN: a small 1-D conv net over the spectrogram
frames yields one logit per frame, a softmax over time turns them into weights
which, rescaled by the number of frames F (mean weight 1), multiply the
spectrogram (broadcast over frequency).

Inputs
    spec  : (B, 1, 92, F) float32, log-filterbank spectrogram (pack value / spec_scale)
    sheet : (B, 1, 80, 100) float32 in [0, 1], ink = 1 (160x200 px crop at 0.5x)
Outputs: (B, embed_dim) L2-normalised embeddings.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from scorestream.core.config import default_path

DEFAULT_CONFIG_PATH = default_path("model")

SPEC_BINS = 92
SHEET_H, SHEET_W = 80, 100          # network input (after 0.5x downscale)
CROP_H, CROP_W = 160, 200           # crop in strip pixels
HEAD_CHANNELS = 32


@dataclass
class ModelConfig:
    audio_frames: int = 42
    attention: bool = False
    embed_dim: int = 32
    filters: tuple[int, ...] = (24, 48, 96, 96)
    spec_bins: int = SPEC_BINS
    sheet_shape: tuple[int, int] = (SHEET_H, SHEET_W)
    attention_hidden: int = 32
    name: str = ""
    # Where the pair's onset sits in the inputs (0, 0: centred, the paper's layout).  The audio
    # window is frames ``f + audio_offset_frames - F//2 ... + F - 1`` around onset frame ``f``
    # (-(F - F//2 - 1): the window ends at the onset, nothing after it is heard: a causal model);
    # the sheet crop is centred on column ``x + sheet_offset_px`` (negative: mostly the music
    # already played, left of the notehead).
    audio_offset_frames: int = 0
    sheet_offset_px: int = 0

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        self.sheet_shape = tuple(int(s) for s in self.sheet_shape)  # type: ignore[assignment]
        if self.audio_frames < 2 ** len(self.filters):
            raise ValueError(f"audio_frames={self.audio_frames} too small for {len(self.filters)} pooling blocks")
        half = self.audio_frames // 2
        lo, hi = -(self.audio_frames - half - 1), half
        if not lo <= self.audio_offset_frames <= hi:
            raise ValueError(f"audio_offset_frames={self.audio_offset_frames} puts the onset outside the "
                             f"{self.audio_frames}-frame window (allowed {lo}..{hi})")
        if abs(self.sheet_offset_px) > CROP_W // 2:
            raise ValueError(f"sheet_offset_px={self.sheet_offset_px} puts the notehead outside the {CROP_W} px crop")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["filters"] = list(self.filters)
        d["sheet_shape"] = list(self.sheet_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**d)


def load_config(name: str = "baseline", path: str | Path | None = None) -> ModelConfig:
    """Read section `[name]` of configs/model.toml (or `path`)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    if name not in data:
        raise KeyError(f"config section [{name}] not in {path} (have: {sorted(data)})")
    d = dict(data[name])
    d.setdefault("name", name)
    return ModelConfig.from_dict(d)


def _conv_bn_elu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ELU(inplace=True)]


class Pathway(nn.Module):
    """VGG-style CNN + 1x1 conv + dense -> L2-normalised embedding."""

    def __init__(self, in_hw: tuple[int, int], filters: tuple[int, ...], embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        h, w = in_hw
        for f in filters:
            layers += _conv_bn_elu(cin, f) + _conv_bn_elu(f, f) + [nn.MaxPool2d(2)]
            cin = f
            h, w = h // 2, w // 2
        layers += _conv_bn_elu(cin, HEAD_CHANNELS, k=1)
        self.features = nn.Sequential(*layers)
        self.out_hw = (h, w)
        self.fc = nn.Linear(HEAD_CHANNELS * h * w, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        z = self.fc(torch.flatten(z, 1))
        return F.normalize(z.float(), dim=1, eps=1e-8)


class TimeAttention(nn.Module):
    """Soft attention over time: one weight per frame, mean weight 1."""

    def __init__(self, bins: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(bins, hidden, 5, padding=2, bias=False), nn.BatchNorm1d(hidden), nn.ELU(inplace=True),
            nn.Conv1d(hidden, hidden, 5, padding=4, dilation=2, bias=False), nn.BatchNorm1d(hidden), nn.ELU(inplace=True),
            nn.Conv1d(hidden, 1, 1),
        )
        # start from uniform weights (identity on the spectrogram)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def weights(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B,1,bins,F) -> weights (B,F), softmax over time times F."""
        logits = self.net(spec[:, 0]).float()[:, 0]
        return torch.softmax(logits, dim=-1) * spec.shape[-1]

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        w = self.weights(spec).to(spec.dtype)
        return spec * w[:, None, None, :]


class AudioEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.attention = TimeAttention(cfg.spec_bins, cfg.attention_hidden) if cfg.attention else None
        self.pathway = Pathway((cfg.spec_bins, cfg.audio_frames), cfg.filters, cfg.embed_dim)

    def attention_weights(self, spec: torch.Tensor) -> torch.Tensor | None:
        return None if self.attention is None else self.attention.weights(spec)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            spec = self.attention(spec)
        return self.pathway(spec)


class SheetEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pathway = Pathway(tuple(cfg.sheet_shape), cfg.filters, cfg.embed_dim)

    def forward(self, sheet: torch.Tensor) -> torch.Tensor:
        return self.pathway(sheet)


class AudioSheetNet(nn.Module):
    """Both pathways; forward(spec, sheet) -> (audio_emb, sheet_emb)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg)
        self.sheet = SheetEncoder(cfg)

    def embed_audio(self, spec: torch.Tensor) -> torch.Tensor:
        return self.audio(spec)

    def embed_sheet(self, sheet: torch.Tensor) -> torch.Tensor:
        return self.sheet(sheet)

    def forward(self, spec: torch.Tensor, sheet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio(spec), self.sheet(sheet)


def build_model(cfg: ModelConfig) -> AudioSheetNet:
    return AudioSheetNet(cfg)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_best(path: str | Path, model: AudioSheetNet, extra: dict | None = None) -> None:
    """Write a `best.pt`: {"config": dict, "state_dict": ..., **extra}."""
    m = getattr(model, "_orig_mod", model)
    state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    torch.save({"config": m.cfg.to_dict(), "state_dict": state, **(extra or {})}, str(path))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> AudioSheetNet:
    """Load a `best.pt` (or a training `ckpt.pt`) into an eval-mode model."""
    obj = torch.load(str(path), map_location=map_location, weights_only=False)
    cfg = ModelConfig.from_dict(obj["config"])
    model = AudioSheetNet(cfg)
    state = obj.get("state_dict", obj.get("model"))
    model.load_state_dict(state)
    return model.eval()
