"""Inference core: frames -> per-frame transforms for every method (numpy + torch only).

Like :mod:`usnav.freehand.models`, this module imports nothing else from usnav
(relative imports only), so it is vendored unchanged into submission folders.

Outputs are the TUS-REC prediction transforms, image-mm, float64:
``global`` (N-1, 4, 4) frame n -> frame 0 and ``local`` (N-1, 4, 4) frame n -> frame n-1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .models import SequenceNet, TwoFrameNet, build_model, downsample_frames, matrix_from_params_deg
from .decorrelation import chain_local  # usnav.geometry.tracking.chain_local, or its vendored fallback

__all__ = ["chain_local", "load_model", "predict_scan", "predict_transforms", "prepare_frames", "identity_transforms",
           "with_frame_index"]

Progress = Callable[[int], None] | None


def identity_transforms(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    eye = np.broadcast_to(np.eye(4), (n_frames - 1, 4, 4)).copy()
    return eye, eye.copy()


def prepare_frames(frames, input_hw: tuple[int, int], chunk: int = 64, progress: Progress = None) -> np.ndarray:
    """(N, H, W) uint8 frames (array or lazy h5py dataset) -> (N, h, w) uint8 area-downsampled."""
    n = int(frames.shape[0])
    out = np.empty((n, *input_hw), dtype=np.uint8)
    for start in range(0, n, chunk):
        block = torch.from_numpy(np.ascontiguousarray(frames[start : start + chunk]))
        small = downsample_frames(block, input_hw)
        out[start : start + len(block)] = (small * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).numpy()
        if progress is not None:
            progress(len(block))
    return out


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load ``config.json`` + ``model.safetensors`` from a checkpoint folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = build_model(config["model"])
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    model.to(device).eval()
    return model, config


def _to_input(small: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(small).to(device=device, dtype=torch.float32).div_(255.0)


def with_frame_index(feats: np.ndarray, start: int = 0) -> np.ndarray:
    """Pair features (T, F) -> (T, F + 1): the last column is each pair's index in the scan / 1000
    (``start`` = index of the first pair), the input of ``SequenceConfig.frame_index_input`` models."""
    index_k = (start + np.arange(len(feats), dtype=np.float32)) / 1000.0
    return np.concatenate([np.asarray(feats, dtype=np.float32), index_k[:, None]], axis=1)


@torch.no_grad()
def _predict_from_features(model: SequenceNet, feats: np.ndarray, device, progress: Progress = None):
    """Locals from pair features (N-1, F): the whole scan in one pass (``cfg.infer_window == 0``), or
    windows of ``cfg.window`` pairs overlapping by half, each pair taking the output of the window in
    which it is most central; globals are the chained locals."""
    if model.cfg.frame_index_input:
        feats = with_frame_index(feats)
    n1 = len(feats)
    span = model.cfg.window if model.cfg.infer_window < 0 else (model.cfg.infer_window or n1)
    T = min(span, n1)
    starts = list(range(0, max(1, n1 - T + 1), max(1, T // 2)))
    if starts[-1] != n1 - T:
        starts.append(n1 - T)
    params = np.zeros((n1, 6))
    best = np.full(n1, -1.0)
    x_all = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
    for s in starts:
        local, _ = model(x_all[s : s + T][None])
        i = np.arange(s, s + T)
        centrality = np.minimum(i - s, s + T - 1 - i) + (i == 0) * T + (i == n1 - 1) * T  # scan ends: no context lost
        take = centrality > best[i]
        params[i[take]] = local[0].double().cpu().numpy()[take]
        best[i[take]] = centrality[take]
    L = matrix_from_params_deg(torch.from_numpy(params)).numpy()
    if progress is not None:
        progress(n1)
    return chain_local(L), L


def predict_scan(model: torch.nn.Module, config: dict, frames, T_mm_from_pixel, device: str | torch.device = "cpu",
                 progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
    """Global and local transforms of a scan's frames (N, H, W) (array or lazy h5py dataset) with a loaded model."""
    mcfg = config["model"]
    if mcfg.get("input") == "features":
        from .decorrelation import feature_vectors, pair_features

        feats = feature_vectors(pair_features(frames, T_mm_from_pixel, progress=progress))
        return predict_transforms(model, feats, device)
    small = prepare_frames(frames, tuple(mcfg["input_hw"]), progress=progress)
    return predict_transforms(model, small, device, progress=progress)


@torch.no_grad()
def predict_transforms(
    model: torch.nn.Module, small: np.ndarray, device: str | torch.device = "cpu", batch: int = 64,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global and local transforms (N-1, 4, 4) float64 of a scan from its downsampled frames (N, h, w) uint8
    (or, for a ``features`` sequence model, its pair features (N-1, F))."""
    model.eval()
    n = len(small)
    if n < 2:
        raise ValueError("a scan needs at least 2 frames")
    if isinstance(model, TwoFrameNet):
        params = []
        for start in range(1, n, batch):
            stop = min(n, start + batch)
            x = _to_input(small[start - 1 : stop], device)
            pairs = torch.stack([x[:-1], x[1:]], dim=1)
            params.append(model(pairs).double().cpu())
            if progress is not None:
                progress(stop - start)
        L = matrix_from_params_deg(torch.cat(params)).numpy()
        return chain_local(L), L
    if isinstance(model, SequenceNet) and model.cfg.input == "features":
        return _predict_from_features(model, small, device, progress)
    if isinstance(model, SequenceNet):
        T = model.cfg.window
        L = np.empty((n - 1, 4, 4))
        G = np.empty((n - 1, 4, 4))
        base = np.eye(4)
        # Windows of T+1 frames share their boundary frame: [0..T], [T..2T], ...
        for s in range(0, n - 1, T):
            e = min(n, s + T + 1)
            x = _to_input(small[s:e], device)[None]
            local, glob = model(x)
            Lw = matrix_from_params_deg(local[0].double().cpu()).numpy()
            Gw = matrix_from_params_deg(glob[0].double().cpu()).numpy()
            L[s : e - 1] = Lw
            G[s : e - 1] = base @ (Gw if model.cfg.global_mode == "head" else chain_local(Lw))
            base = G[e - 2]
            if progress is not None:
                progress(e - 1 - s)
        return G, L
    raise TypeError(f"unsupported model {type(model).__name__}")
