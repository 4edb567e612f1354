"""Child process of the TUS-REC harness: imports a submission's ``predict_ddfs.py``
and runs it on one scan per request.

Run as ``python -m usnav.harness._tusrec_worker SUBMISSION_DIR --device cpu
[--memory-limit-bytes B] --request-fd R --reply-fd W``. The submission folder
becomes the working directory and the first entry of ``sys.path``, as in the
official docker image where ``test.py`` does ``from predict_ddfs import
predict_ddfs``.

Request: ``{"frames_path", "landmarks_npy", "calib_path", "out_dir"}``. The
frames are read in full (``(N, H, W)`` uint8, as the official harness does)
before the clock starts; the clock covers only the ``predict_ddfs`` call.
Reply: ``{"event": "done", "time_s", "arrays": {...}}`` with the four outputs
saved as ``GP.npy``, ``GL.npy``, ``LP.npy``, ``LL.npy`` in ``out_dir``;
``{"event": "exception", ...}`` when the call raises; ``{"event": "invalid",
...}`` when the outputs cannot be saved as numeric arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

OUTPUT_NAMES = ("GP", "GL", "LP", "LL")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _to_numpy(value, np):
    """A returned array (numpy, torch tensor or nested lists) as a numpy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"is not a numeric array (dtype {arr.dtype})")
    return arr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("submission")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-limit-bytes", type=int, default=0)
    parser.add_argument("--request-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args(argv)

    from usnav.harness.sandbox import apply_limits

    apply_limits(args.memory_limit_bytes or None)
    reply = os.fdopen(args.reply_fd, "w", buffering=1)
    requests = os.fdopen(args.request_fd, "r")

    def send(message: dict) -> None:
        reply.write(json.dumps(message) + "\n")
        reply.flush()

    try:
        import h5py
        import numpy as np
        import torch

        os.chdir(args.submission)
        sys.path.insert(0, args.submission)
        import importlib

        module = importlib.import_module("predict_ddfs")
        predict_ddfs = getattr(module, "predict_ddfs", None)
        if not callable(predict_ddfs):
            raise AttributeError("predict_ddfs.py defines no function predict_ddfs")
        device = torch.device(args.device)
    except BaseException as exc:  # noqa: BLE001 - everything the submission may raise
        send({"event": "import-error", "message": _describe(exc), "traceback": traceback.format_exc()})
        return 1
    send({"event": "ready"})

    for line in requests:
        request = json.loads(line)
        try:
            with h5py.File(request["frames_path"], "r") as f:
                frames = f["frames"][()]
            landmark = np.load(request["landmarks_npy"])
        except BaseException as exc:  # noqa: BLE001
            send({"event": "harness-error", "message": _describe(exc)})
            continue
        try:
            t0 = time.perf_counter()
            result = predict_ddfs(frames, landmark, request["calib_path"], device)
            if device.type == "cuda" and torch.cuda.is_available():
                torch.cuda.synchronize()  # as the official 2025 test script
            elapsed = time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - incl. SystemExit, MemoryError
            send({"event": "exception", "message": _describe(exc), "traceback": traceback.format_exc()})
            continue
        del frames
        try:
            if not isinstance(result, (tuple, list)) or len(result) != 4:
                got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
                raise TypeError(f"predict_ddfs must return 4 arrays (GP, GL, LP, LL), got {got}")
            arrays = {}
            for name, value in zip(OUTPUT_NAMES, result):
                try:
                    arr = _to_numpy(value, np)
                except BaseException as exc:  # noqa: BLE001
                    raise TypeError(f"{name} {exc}") from None
                path = os.path.join(request["out_dir"], f"{name}.npy")
                np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
                arrays[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
                del arr
            del result
        except BaseException as exc:  # noqa: BLE001
            send({"event": "invalid", "message": _describe(exc), "time_s": elapsed})
            continue
        send({"event": "done", "time_s": elapsed, "arrays": arrays})
    return 0


if __name__ == "__main__":
    sys.exit(main())
