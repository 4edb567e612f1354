"""Pose networks for trackerless freehand ultrasound (plain torch, no torchvision).

Everything here depends on torch only, so the file can be vendored unchanged
into a TUS-REC submission folder (see :mod:`usnav.freehand.submission`).

Parameters and frames
---------------------
A network predicts rigid transforms as 6 numbers ``(rx, ry, rz, tx, ty, tz)``:
Euler ZYX angles in **degrees** (``R = Rz @ Ry @ Rx``, as
:func:`usnav.geometry.matrix_from_params` but in degrees so the raw outputs
are O(1)) and a translation in **mm**, both in image-mm space (x along
columns, y along rows, z out of plane). A *local* transform maps frame n to
frame n-1; a *window-global* one maps frame t to the first frame of its window.

Models
------
- :class:`TwoFrameNet` (method ``two-frame``): the TUS-REC baseline, an
  EfficientNet-B1-like CNN (MBConv blocks with squeeze-excitation, SiLU, stem
  32 channels) on two stacked adjacent frames (2 channels) -> 6 parameters.
  Presets: ``b1`` (width 1.0, depth 1.1, as EfficientNet-B1) and ``lite``
  (width 0.5, depth 0.5, head 512; same block structure, for CPU training).
- :class:`SequenceNet` (method ``sequence``): a small CNN encodes every
  adjacent pair (previous, current, difference) of a window of frames, a
  bidirectional GRU mixes the pair features over the whole window, and two
  heads regress the local transform of each pair and the window-global
  transform of each frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "TwoFrameConfig",
    "SequenceConfig",
    "TwoFrameNet",
    "SequenceNet",
    "build_model",
    "matrix_from_params_deg",
    "corner_points_mm",
    "grid_points_mm",
    "downsample_frames",
]


# --------------------------------------------------------------------------- geometry (torch)


def matrix_from_params_deg(params: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) rigid transforms from (..., 6) = (rx, ry, rz degrees, tx, ty, tz mm), R = Rz Ry Rx."""
    a = params[..., :3] * (math.pi / 180.0)
    cx, cy, cz = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sx, sy, sz = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    zero, one = torch.zeros_like(cx), torch.ones_like(cx)
    t = params[..., 3:]
    rows = [
        torch.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx, t[..., 0]], -1),
        torch.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx, t[..., 1]], -1),
        torch.stack([-sy, cy * sx, cy * cx, t[..., 2]], -1),
        torch.stack([zero, zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def corner_points_mm(T_mm_from_pixel, frame_shape: tuple[int, int]) -> torch.Tensor:
    """(4, 4) homogeneous image-mm points (columns) of the four image corners
    (1-based pixels (1,1), (W,1), (1,H), (W,H))."""
    return grid_points_mm(T_mm_from_pixel, frame_shape, 2)


def grid_points_mm(T_mm_from_pixel, frame_shape: tuple[int, int], n: int) -> torch.Tensor:
    """(4, n*n) homogeneous image-mm points of an n x n grid spanning the image (corners included)."""
    H, W = frame_shape
    S = torch.as_tensor(T_mm_from_pixel, dtype=torch.float64)
    xs = torch.linspace(1.0, float(W), n, dtype=torch.float64)
    ys = torch.linspace(1.0, float(H), n, dtype=torch.float64)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(n * n, dtype=torch.float64),
                       torch.ones(n * n, dtype=torch.float64)])
    return S @ pix


def downsample_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average (n, H, W) frames (any dtype) to (n, h, w) float32 in [0, 1]."""
    x = frames.to(torch.float32).unsqueeze(1) / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="area") if (x.shape[-2] % size[0] == 0 and x.shape[-1] % size[1] == 0) \
            else F.adaptive_avg_pool2d(x, tuple(size))
    return x[:, 0]


# --------------------------------------------------------------------------- EfficientNet-like baseline


def _round_channels(c: float, divisor: int = 8) -> int:
    v = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return v + divisor if v < 0.9 * c else v


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, squeeze-excite (0.25 of input), 1x1 project."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            SqueezeExcite(mid, max(1, c_in // 4)),
            nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# EfficientNet-B0 stages: (expand, kernel, stride, channels, repeats)
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
_PRESETS = {"b1": (1.0, 1.1, 1280), "lite": (0.5, 0.5, 512), "tiny": (0.25, 0.25, 64)}


@dataclass
class TwoFrameConfig:
    """Configuration of :class:`TwoFrameNet`; ``input_hw`` is the network input (h, w)."""

    method: str = "two-frame"
    preset: str = "lite"
    input_hw: tuple[int, int] = (120, 160)
    in_channels: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class TwoFrameNet(nn.Module):
    """EfficientNet-like regressor: (B, 2, h, w) frames in [0, 1] -> (B, 6) local parameters."""

    def __init__(self, cfg: TwoFrameConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, depth, head = _PRESETS[cfg.preset]
        stem = 32  # stem width of EfficientNet-B0/B1, kept in every preset
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.SiLU()]
        c = stem
        for expand, k, s, ch, reps in _B0_STAGES:
            out = _round_channels(ch * width)
            for i in range(int(math.ceil(reps * depth))):
                layers.append(MBConv(c, out, expand, k, s if i == 0 else 1))
                c = out
        layers += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(head, 6)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.features(pairs)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- sequence model


@dataclass
class SequenceConfig:
    """Configuration of :class:`SequenceNet`.

    window: number of local transforms per training window (window + 1 frames).
    """

    method: str = "sequence"
    input_hw: tuple[int, int] = (120, 160)
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    feature_dim: int = 256
    hidden: int = 128
    layers: int = 2
    window: int = 32
    global_mode: str = "head"  # inference globals: "head" (window-global head) or "chain" (chained locals)
    # "frames": a CNN encodes each pair of downsampled frames; "features": an MLP encodes the pair
    # measurements of usnav.freehand.decorrelation.feature_vectors (n_features per pair)
    input: str = "frames"
    n_features: int = 0  # inputs per pair (the pair features, plus 1 with ``frame_index_input``)
    # pairs per inference pass: -1 = ``window`` (overlapping windows), 0 = the whole scan in one pass
    infer_window: int = -1
    # one more input per pair: its index in the scan / 1000 (the scan's start anchors the protocol's signs)
    frame_index_input: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    groups = 8 if c_out % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU())


class PairEncoder(nn.Module):
    """(n, 3, h, w) (previous, current, current - previous) -> (n, feature_dim)."""

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = 3
        for ch in cfg.channels:
            blocks += [_conv_block(c, ch, 2), _conv_block(ch, ch, 1)]
            c = ch
        self.conv = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((3, 4))  # keep coarse layout: rotations need where, not only what
        self.fc = nn.Sequential(nn.Linear(c * 12, cfg.feature_dim), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class SequenceNet(nn.Module):
    """(B, T+1, h, w) frames in [0, 1] -> local (B, T, 6) and window-global (B, T, 6) parameters.

    ``local[:, t]`` maps frame t+1 to frame t; ``global[:, t]`` maps frame t+1 to frame 0 of the window.
    """

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.input == "features":
            # fixed standardisation of the inputs (set from the training data, saved with the weights)
            self.register_buffer("feature_mean", torch.zeros(cfg.n_features))
            self.register_buffer("feature_std", torch.ones(cfg.n_features))
            self.encoder = nn.Sequential(nn.Linear(cfg.n_features, cfg.feature_dim), nn.SiLU(),
                                         nn.Linear(cfg.feature_dim, cfg.feature_dim), nn.SiLU())
        else:
            self.encoder = PairEncoder(cfg)
        self.gru = nn.GRU(cfg.feature_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True)
        self.local_head = nn.Linear(2 * cfg.hidden, 6)
        self.global_gru = nn.GRU(2 * cfg.hidden + 6, cfg.hidden, batch_first=True)  # causal accumulation
        self.global_head = nn.Linear(cfg.hidden, 6)
        for head in (self.local_head, self.global_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T+1, h, w), or pair features (B, T, n_features) when ``cfg.input == "features"``.

        lengths: (B,) int, real pairs per window when shorter windows are padded at the end (features
        only); the GRUs then never see the padding (packed sequences) and padded outputs are zero.
        """
        if self.cfg.input == "features":
            feats = self.encoder((frames - self.feature_mean) / self.feature_std)
        else:
            B, n, h, w = frames.shape
            prev, cur = frames[:, :-1], frames[:, 1:]
            pairs = torch.stack([prev, cur, cur - prev], dim=2).reshape(B * (n - 1), 3, h, w)
            feats = self.encoder(pairs).reshape(B, n - 1, -1)
        ctx = self._run_gru(self.gru, feats, lengths)
        local = self.local_head(ctx)
        acc = self._run_gru(self.global_gru, torch.cat([ctx, local], dim=-1), lengths)
        glob = self.global_head(acc) + torch.cumsum(local, dim=1)  # residual on the summed local parameters
        if lengths is not None:
            valid = (torch.arange(local.shape[1], device=local.device)[None] < lengths.to(local.device)[:, None])
            local, glob = local * valid[..., None], glob * valid[..., None]
        return local, glob

    @staticmethod
    def _run_gru(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None or bool((lengths == x.shape[1]).all()):
            return gru(x)[0]
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = gru(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


# --------------------------------------------------------------------------- factory


def build_model(config: dict) -> nn.Module:
    """A model from its JSON config dict (``method`` selects the class)."""
    cfg = dict(config)
    method = cfg.get("method")
    if "input_hw" in cfg:
        cfg["input_hw"] = tuple(cfg["input_hw"])
    if method == "two-frame":
        return TwoFrameNet(TwoFrameConfig(**cfg))
    if method == "sequence":
        if "channels" in cfg:
            cfg["channels"] = tuple(cfg["channels"])
        return SequenceNet(SequenceConfig(**cfg))
    raise ValueError(f"no network for method {method!r}")
