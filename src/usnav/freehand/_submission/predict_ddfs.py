"""TUS-REC 2025 submission entry point, written by ``usnav freehand submission``.

Self-contained: needs numpy, torch and safetensors only (see requirements.txt);
the inference code is vendored in ``usnav_freehand/`` and the model in
``model/`` (config.json + model.safetensors), or ``method.json`` for the
training-free decorrelation method.

``predict_ddfs(frames, landmark, data_path_calib, device)``:
- frames: (N, H, W) uint8 frames of one scan,
- landmark: (K, 3) int, (frame index, x, y), x and y 1-based pixels,
- data_path_calib: path of ``calib_matrix.csv`` (S: pixel -> image-mm, C),
- device: a torch device,
returns GP (N-1, 3, H*W), GL (3, K), LP (N-1, 3, H*W), LL (3, K): float32
displacements in mm of every pixel / landmark under the predicted global
(frame n -> frame 0) and local (frame n -> frame n-1) transforms.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def read_scaling(path: str) -> np.ndarray:
    """S (4, 4) from calib_matrix.csv: the first of the two numeric 4x4 blocks."""
    rows = []
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().split(",") if c.strip()]
            try:
                values = [float(c) for c in cells]
            except ValueError:
                continue
            if len(values) == 4:
                rows.append(values)
    if len(rows) < 8:
        raise ValueError(f"{path}: expected two 4x4 matrices")
    return np.asarray(rows[:4], dtype=np.float64)


def predict_transforms(frames: np.ndarray, S: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """Global and local transforms (N-1, 4, 4) float64 of the scan, image-mm."""
    from usnav_freehand import decorrelation, infer

    method_file = os.path.join(HERE, "method.json")
    if os.path.exists(method_file):
        with open(method_file) as f:
            method = json.load(f)["method"]
        if method == "identity":
            return infer.identity_transforms(len(frames))
        return decorrelation.estimate_transforms(frames, S)
    model, config = infer.load_model(os.path.join(HERE, "model"), device)
    return infer.predict_scan(model, config, frames, S, device)


def _pixel_points(S: np.ndarray, H: int, W: int) -> np.ndarray:
    y, x = np.meshgrid(np.arange(1, H + 1, dtype=np.float64), np.arange(1, W + 1, dtype=np.float64), indexing="ij")
    pix = np.stack([x.ravel(), y.ravel(), np.zeros(H * W), np.ones(H * W)], axis=0)
    return (S @ pix)[:3].T.copy()  # (P, 3)


def _pixel_ddf(T: np.ndarray, p: np.ndarray, chunk: int = 16) -> np.ndarray:
    out = np.empty((len(T), 3, len(p)), dtype=np.float32)
    for s in range(0, len(T), chunk):
        Tc = T[s : s + chunk]
        moved = Tc[:, :3, :3] @ p.T + Tc[:, :3, 3:4]
        out[s : s + len(Tc)] = (moved - p.T[None]).astype(np.float32)
    return out


def _landmark_ddf(T: np.ndarray, landmark: np.ndarray, S: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmark)
    pix = np.stack([lm[:, 1], lm[:, 2], np.zeros(len(lm)), np.ones(len(lm))], axis=0).astype(np.float64)
    p = (S @ pix)[:3].T
    Tk = T[lm[:, 0] - 1]
    moved = np.einsum("kij,kj->ki", Tk[:, :3, :3], p) + Tk[:, :3, 3]
    return (moved - p).T.astype(np.float32)


def predict_ddfs(frames, landmark, data_path_calib, device):
    frames = np.asarray(frames)
    S = read_scaling(data_path_calib)
    if isinstance(device, str):
        device = torch.device(device)
    with torch.no_grad():
        G, L = predict_transforms(frames, S, device)
    H, W = frames.shape[1:]
    p = _pixel_points(S, H, W)
    GP = _pixel_ddf(G, p)
    LP = _pixel_ddf(L, p)
    GL = _landmark_ddf(G, landmark, S)
    LL = _landmark_ddf(L, landmark, S)
    return GP, GL, LP, LL
