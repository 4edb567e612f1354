"""usnav.freehand training: checkpoints, exact resume, DDP, losses and labels."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tusrec_dataset
from usnav.freehand.train import TrainConfig, train

TINY = dict(input_hw=(16, 16), window=6, window_stride=3, batch_size=2, val_fraction=0.25, steps_per_epoch=3)


def _tiny_overrides(method: str) -> dict:
    if method == "sequence":
        return {"channels": [4, 8], "feature_dim": 16, "hidden": 8, "layers": 1}
    return {"preset": "tiny"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_tusrec_dataset(root, n_frames=16, frame_shape=(24, 32))
    return root


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_labels_chain_to_window_globals(tiny_data: Path):
    """Chaining the local labels of a window gives its window-global labels (and reversal inverts them)."""
    from usnav.freehand.data import load_scans, make_batch
    from usnav.geometry import chain_local, invert
    from usnav.io.tusrec import open_dataset

    ds = open_dataset(tiny_data)
    scans = load_scans(ds, ds.scans[:1], (16, 16))
    for p in (0.0, 1.0):
        b = make_batch(scans, np.array([[0, 3]]), 7, np.random.default_rng(0), reverse_p=p)
        np.testing.assert_allclose(chain_local(b["local"][0].numpy()), b["window_global"][0].numpy(), atol=1e-4)
    # and the scan's own ground truth: chaining its locals gives its globals
    s = scans[0]
    L = invert(s.poses[:-1]) @ s.poses[1:]
    np.testing.assert_allclose(chain_local(L), s.poses[1:], atol=1e-4)  # float32-rigid tracker data


@pytest.mark.parametrize("method", ["two-frame", "sequence"])
def test_train_writes_metrics_and_checkpoints_round_trip(tiny_data: Path, tmp_path: Path, method: str):
    from usnav.freehand.infer import load_model

    run = tmp_path / "run"
    cfg = TrainConfig(method=method, epochs=2, model_overrides=_tiny_overrides(method), **TINY)
    result = train(tiny_data, run, cfg, show_progress=False)
    assert result["epochs"] == 2
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "global_step", "train_loss"] and len(rows) == 3
    assert np.isfinite(float(rows[-1].split(",")[7]))  # validation score
    for name in ("best", "last"):
        assert (run / name / "model.safetensors").exists() and (run / name / "config.json").exists()
    # safetensors round trip: the loaded model has exactly the saved tensors
    model, config = load_model(run / "last")
    saved = _weights(run / "last")
    assert config["model"]["method"] == method
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])
    # no pickle files anywhere in the run
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]


def test_existing_run_needs_resume(tiny_data: Path, tmp_path: Path):
    from usnav.errors import InputError

    cfg = TrainConfig(method="two-frame", epochs=1, model_overrides=_tiny_overrides("two-frame"), **TINY)
    train(tiny_data, tmp_path / "run", cfg, show_progress=False)
    with pytest.raises(InputError, match="--resume"):
        train(tiny_data, tmp_path / "run", cfg, show_progress=False)


@pytest.mark.parametrize("method", ["two-frame", "sequence"])
def test_resume_is_exact(tiny_data: Path, tmp_path: Path, method: str):
    """Interrupted (mid-epoch checkpoint, then end of epoch 1) + resumed == uninterrupted."""
    over = _tiny_overrides(method)
    full = TrainConfig(method=method, epochs=2, model_overrides=over, **TINY)
    train(tiny_data, tmp_path / "a", full, show_progress=False)
    # run b: stops after epoch 1, then resumes to epoch 2
    train(tiny_data, tmp_path / "b", TrainConfig(method=method, epochs=1, model_overrides=over, **TINY),
          show_progress=False)
    train(tiny_data, tmp_path / "b", full, resume=True, show_progress=False)
    a, b = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state = json.loads((tmp_path / "b" / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and state["global_step"] == 6


def test_resume_mid_epoch_is_exact(tiny_data: Path, tmp_path: Path):
    over = _tiny_overrides("sequence")
    base = dict(TINY, steps_per_epoch=4)
    full = TrainConfig(method="sequence", epochs=1, model_overrides=over, **base)
    train(tiny_data, tmp_path / "a", full, show_progress=False)
    # simulate an interruption: a run that checkpoints every 2 steps and is cut after step 2
    from usnav.freehand import train as train_mod

    cut = TrainConfig(method="sequence", epochs=1, checkpoint_every=2, model_overrides=over, **base)
    calls = {"n": 0}
    real = train_mod.compute_loss

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    train_mod.compute_loss = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_data, tmp_path / "b", cut, show_progress=False)
    finally:
        train_mod.compute_loss = real
    state = json.loads((tmp_path / "b" / "last" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)
    train(tiny_data, tmp_path / "b", cut, resume=True, show_progress=False)
    a, b = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, dump: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    cfg = TrainConfig(method="sequence", epochs=1, model_overrides=_tiny_overrides("sequence"), **TINY)

    def dump_weights(model):
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, f"{dump}/rank{rank}.safetensors")

    train(data, out, cfg, show_progress=False, on_finish=dump_weights)


@pytest.mark.timeout(180)
def test_ddp_two_cpu_processes_keep_equal_weights(tiny_data: Path, tmp_path: Path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path / "run"), str(tmp_path)), nprocs=2,
             join=True)
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    init = torch.nn.Module  # weights must have moved from the (shared) initialisation
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = _weights(tmp_path / "run" / "last")
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2
    del init


def test_feature_windows_and_mirrored_labels(tiny_data: Path, tmp_path: Path):
    """Sequence models on pair features: one feature row per adjacent pair, labels of the same
    frames; a z-mirrored window (the features cannot tell the sign of out-of-plane motion) has
    the labels M L M with M = diag(1, 1, -1, 1)."""
    from usnav.freehand.data import load_scans, make_batch
    from usnav.freehand.decorrelation import N_FEATURES
    from usnav.io.tusrec import open_dataset

    ds = open_dataset(tiny_data)
    scans = load_scans(ds, ds.scans[:1], (16, 16), features=True, cache_dir=tmp_path / "cache")
    s = scans[0]
    assert s.features.shape == (s.n_frames - 1, N_FEATURES) and np.isfinite(s.features).all()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # cached
    again = load_scans(ds, ds.scans[:1], (16, 16), features=True, cache_dir=tmp_path / "cache")[0]
    np.testing.assert_array_equal(again.features, s.features)
    plain = make_batch(scans, np.array([[0, 2]]), 6, np.random.default_rng(0), 0.0, 3, mirror_p=0.0)
    mirrored = make_batch(scans, np.array([[0, 2]]), 6, np.random.default_rng(0), 0.0, 3, mirror_p=1.0)
    assert plain["frames"].shape == (1, 5, N_FEATURES)
    np.testing.assert_array_equal(plain["frames"], mirrored["frames"])
    M = np.diag([1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(mirrored["local"][0].numpy(), M @ plain["local"][0].numpy() @ M, atol=1e-12)
    np.testing.assert_allclose(mirrored["window_global"][0].numpy(), M @ plain["window_global"][0].numpy() @ M,
                               atol=1e-12)


def _feature_net(n_features: int, **kw):
    from usnav.freehand.models import SequenceConfig, SequenceNet

    torch.manual_seed(0)
    net = SequenceNet(SequenceConfig(input="features", n_features=n_features, feature_dim=12, hidden=6, layers=2,
                                     window=8, **kw)).eval()
    for head in (net.local_head, net.global_head):  # the heads start at zero: give them weights
        torch.nn.init.normal_(head.weight, std=0.3)
    return net


def test_padded_windows_equal_the_unpadded_ones():
    """A window shorter than the batch's length, zero-padded at the end, gives exactly the outputs of
    the same window alone (packed GRUs: neither direction sees the padding); padded outputs are 0."""
    net = _feature_net(5)
    x = torch.randn(2, 9, 5)
    with torch.no_grad():
        alone_local, alone_glob = net(x[1:, :6])
        full_local, full_glob = net(x[:1])
        padded = x.clone()
        padded[1, 6:] = 0.0
        local, glob = net(padded, torch.tensor([9, 6]))
    torch.testing.assert_close(local[1, :6], alone_local[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(glob[1, :6], alone_glob[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(local[0], full_local[0], atol=1e-6, rtol=1e-5)
    assert float(local[1, 6:].abs().max()) == 0.0 and float(glob[1, 6:].abs().max()) == 0.0


def test_whole_scan_inference_and_frame_index_input():
    """infer_window=0 runs the whole scan through the model in one pass; a frame-index model gets
    each pair's index in the scan / 1000 as its last input."""
    from usnav.freehand.infer import predict_transforms, with_frame_index
    from usnav.freehand.models import matrix_from_params_deg

    feats = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    np.testing.assert_array_equal(with_frame_index(feats, 7)[:, -1], (7 + np.arange(40, dtype=np.float32)) / 1000)
    net = _feature_net(5, infer_window=0, frame_index_input=True)
    _, L = predict_transforms(net, feats)
    with torch.no_grad():
        local, _ = net(torch.from_numpy(with_frame_index(feats))[None])
    np.testing.assert_allclose(L, matrix_from_params_deg(local[0].double()).numpy(), atol=1e-6)
    windowed = _feature_net(5, frame_index_input=True)  # infer_window -1: overlapping windows of 8
    _, L8 = predict_transforms(windowed, feats)
    assert np.abs(L8 - L).max() > 1e-4  # the windows do see less context


def test_start_p_frame_index_and_short_scan_padding(tmp_path: Path):
    """start_p=1 moves every window to the scan's first frame; a scan shorter than the window
    (min_frames) gives one padded window with identity labels after its last real pair."""
    from usnav.freehand.data import load_scans, make_batch, window_index
    from usnav.io.tusrec import open_dataset

    root = tmp_path / "data"
    make_tusrec_dataset(root, n_frames=12, frame_shape=(24, 32))
    ds = open_dataset(root)
    scans = load_scans(ds, ds.scans[:2], (16, 16), features=True)
    with pytest.raises(ValueError):
        window_index(scans, 20, 4)
    samples = window_index(scans, 20, 4, min_frames=8)
    np.testing.assert_array_equal(samples, [[0, 0], [1, 0]])
    b = make_batch(scans, samples, 21, np.random.default_rng(0), 0.0, 3, frame_index=True)
    assert b["frames"].shape[:2] == (2, 20) and b["lengths"].tolist() == [11, 11]
    np.testing.assert_allclose(b["frames"][0, :11, -1].numpy(), np.arange(11) / 1000, atol=1e-7)
    assert float(b["frames"][0, 11:].abs().max()) == 0.0
    np.testing.assert_allclose(b["local"][0, 11:].numpy(), np.broadcast_to(np.eye(4), (9, 4, 4)), atol=1e-7)
    long_scans = load_scans(ds, ds.scans[:1], (16, 16), features=True)
    moved = make_batch(long_scans, np.array([[0, 5]]), 4, np.random.default_rng(0), 0.0, 3, start_p=1.0,
                       frame_index=True)
    np.testing.assert_allclose(moved["frames"][0, :, -1].numpy(), np.arange(3) / 1000, atol=1e-7)
    kept = make_batch(long_scans, np.array([[0, 5]]), 4, np.random.default_rng(0), 0.0, 3, frame_index=True)
    np.testing.assert_allclose(kept["frames"][0, :, -1].numpy(), (5 + np.arange(3)) / 1000, atol=1e-7)


def test_train_with_protocol_sign_options(tiny_data: Path, tmp_path: Path):
    """Training with the whole-scan options (no mirroring, windows from the scan start, frame index,
    padded short scans) runs, saves them in the model config and predicts whole scans."""
    from usnav.freehand.infer import load_model, predict_transforms

    cfg = TrainConfig(method="sequence", epochs=1, **{**TINY, "window": 20}, mirror_p=0.0, start_p=0.5,
                      frame_index_input=True, infer_window=0, min_frames=8,
                      model_overrides={"feature_dim": 16, "hidden": 8, "layers": 1})
    train([tiny_data], tmp_path / "run", cfg, show_progress=False)
    model, config = load_model(tmp_path / "run" / "last")
    m = config["model"]
    assert m["infer_window"] == 0 and m["frame_index_input"] and m["n_features"] == model.feature_mean.numel()
    G, L = predict_transforms(model, np.zeros((15, m["n_features"] - 1), np.float32))
    assert G.shape == (15, 4, 4) and np.isfinite(G).all()


def test_cli_train_defaults_are_the_config_defaults():
    """`usnav freehand train` without recipe flags trains the recipe of the default weights."""
    import inspect

    from usnav.cli.freehand import train_cmd

    cli = {k: p.default.default for k, p in inspect.signature(train_cmd).parameters.items()}
    cfg = TrainConfig()
    pairs = {"window": "window", "window_stride": "window_stride", "mirror_p": "mirror_p", "start_p": "start_p",
             "frame_index": "frame_index_input", "infer_window": "infer_window", "min_frames": "min_frames"}
    for cli_name, cfg_name in pairs.items():
        assert cli[cli_name] == getattr(cfg, cfg_name), cli_name
    shipped = json.loads((Path(__file__).parents[1] / "src/usnav/models/freehand/config.json").read_text())["train"]
    for cfg_name in pairs.values():
        assert shipped[cfg_name] == getattr(cfg, cfg_name), cfg_name
