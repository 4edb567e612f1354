"""Batch executor on a private local Ray cluster (2 CPUs, loopback only).

One cluster for the module (starting one takes ~10 s here), started by the
same :func:`usnav.batch.start_local_ray` that ``--ray local`` uses.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from usnav.batch import BatchOptions, Resources, read_manifest, run_batch, start_local_ray
from usnav.batch.synthetic import array_case, array_cases

from test_batch_executor import assert_batch_complete  # noqa: E402  (same folder)

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e .[ray]")

pytestmark = pytest.mark.timeout(180)

RAY = {"ray_address": "local", "progress": False}


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    start_local_ray(num_cpus=2)
    _warm_up_two_workers()
    yield ray
    ray.shutdown()


def _warm_up_two_workers(timeout_s: float = 90.0) -> None:
    """Wait until two Ray worker processes run tasks (worker start-up is slow on a loaded machine)."""

    def sleep_pid(seconds: float) -> int:  # nested: Ray pickles it by value (tests/ is not importable)
        import os
        import time

        time.sleep(seconds)
        return os.getpid()

    remote = ray.remote(num_cpus=1)(sleep_pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(set(ray.get([remote.remote(0.3) for _ in range(2)]))) == 2:
            return
    pytest.fail("the local Ray cluster did not run two worker processes")


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of TCP sockets in LISTEN state owned by pids."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addrs = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                addrs.append(f[1].split(":")[0])
    return addrs


def test_local_cluster_is_loopback_only(local_ray):
    assert local_ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert local_ray.cluster_resources()["CPU"] == 2
    addrs = _listening_addresses(_descendants(os.getpid()) | {os.getpid()})
    assert addrs, "found no listening sockets of the Ray processes"
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert set(addrs) <= loopback, f"non-loopback listeners: {addrs}"


def test_ray_outputs_identical_to_local_pool(local_ray, tmp_path):
    cases = array_cases(6, sleep_s=0.05, size=500)
    pool = run_batch(array_case, cases, tmp_path / "pool", BatchOptions(workers=2, progress=False))
    on_ray = run_batch(array_case, cases, tmp_path / "ray", BatchOptions(**RAY))
    assert on_ray.backend.startswith("Ray") and len(on_ray.done) == 6
    assert on_ray.results == pool.results
    rp, rr = read_manifest(tmp_path / "pool"), read_manifest(tmp_path / "ray")
    assert {k: r.outputs for k, r in rp.items()} == {k: r.outputs for k, r in rr.items()}
    for i in range(6):
        name = f"cases/case_{i:04d}.npy"
        assert (tmp_path / "pool" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    # Two worker processes actually shared the work.
    assert len({r.worker for r in rr.values()}) == 2
    assert_batch_complete(tmp_path / "ray", 6, 500)
    # Rerun on Ray skips everything.
    again = run_batch(array_case, cases, tmp_path / "ray", BatchOptions(**RAY))
    assert len(again.skipped) == 6


def test_ray_worker_killed_mid_batch(local_ray, tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    cases = array_cases(8, sleep_s=0.5, marker_dir=str(marks))
    killed: dict[int, int] = {}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for p in marks.glob("*.started"):
                index, pid = (int(x) for x in p.name.split(".")[:2])
                os.kill(pid, signal.SIGKILL)  # a Ray worker process, in the middle of case `index`
                killed[pid] = index
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    report = run_batch(array_case, cases, out, BatchOptions(**RAY))
    t.join()
    assert killed, "no Ray worker was killed"
    (pid, index), = killed.items()
    assert report.exit_code == 0 and len(report.done) == 8
    assert report.outcomes[index].attempts == 2
    assert read_manifest(out)[f"case_{index:04d}"].worker != f"{os.uname().nodename}:{pid}"
    assert_batch_complete(out, 8)  # correct, nothing duplicated, nothing partial


def test_ray_retries_and_resource_check(local_ray, tmp_path):
    report = run_batch(array_case, array_cases(3, always_fail=True), tmp_path / "f", BatchOptions(retries=1, **RAY))
    assert [o.attempts for o in report.failed] == [2, 2, 2] and report.exit_code == 3
    from usnav.errors import InputError

    with pytest.raises(InputError, match="GPU"):
        run_batch(array_case, array_cases(1), tmp_path / "g", BatchOptions(resources=Resources(gpus=1), **RAY))


def test_join_errors_are_one_sentence_and_fast():
    from usnav.batch import connect_ray
    from usnav.errors import InputError

    t0 = time.monotonic()
    with pytest.raises(InputError, match="no Ray cluster answers at 127.0.0.1:1"):
        connect_ray("127.0.0.1:1")
    with pytest.raises(InputError, match="local, auto or HOST:PORT"):
        connect_ray("nonsense")
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
def test_join_a_cluster_started_with_ray_start(tmp_path):
    """`ray start --head` (loopback, 2 CPUs), then a batch command with --ray HOST:PORT."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "usnav.cli.batch", "synthetic", str(out), "--cases", "6", "--sleep-s", "0.1",
               "--ray", f"127.0.0.1:{port}"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=150,
                             env={**os.environ, "RAY_AUTH_MODE": "token"})
        assert run.returncode == 0, run.stderr
        assert f"Ray cluster 127.0.0.1:{port}" in run.stderr
        assert_batch_complete(out, 6)
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started
        head.wait(30)
        # `ray start` records its address for `ray.init()` / `--ray auto`: do not leave a dead one.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def test_evaluate_submission_on_ray_matches_in_process(local_ray, tmp_path):
    """`usnav tusrec evaluate-submission --ray`: the scans run on the cluster and score as in one process."""
    import json
    import textwrap

    from conftest import make_tusrec_dataset

    from usnav.harness.tusrec import run_evaluation

    data = tmp_path / "data"
    make_tusrec_dataset(data, layout="eval", subjects=("007",), scans=("LH_rotation", "RH_rotation"), n_frames=5,
                        frame_shape=(12, 16), n_landmarks=3, seed=4)
    sub = tmp_path / "identity"
    sub.mkdir()
    (sub / "predict_ddfs.py").write_text(textwrap.dedent('''
        import numpy as np

        def predict_ddfs(frames, landmark, data_path_calib, device):
            n, h, w = frames.shape
            z = np.zeros((n - 1, 3, h * w), np.float32)
            k = np.zeros((3, len(landmark)), np.float32)
            return z, k, z.copy(), k.copy()
    '''))
    local = run_evaluation(sub, data, tmp_path / "local", time_limit_s=120, memory_limit_gb=2,
                           batch=BatchOptions(progress=False))
    on_ray = run_evaluation(sub, data, tmp_path / "ray", time_limit_s=120, memory_limit_gb=2,
                            batch=BatchOptions(**RAY))
    assert on_ray.report.backend.startswith("Ray") and len(on_ray.report.done) == 2

    def strip(summary):
        return [{k: v for k, v in s.items() if k != "time_s"} for s in summary["scans"]]

    assert strip(on_ray.summary) == strip(local.summary)
    assert [s["status"] for s in on_ray.summary["scans"]] == ["ok", "ok"]
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["summary"]["status_counts"]["ok"] == 2
