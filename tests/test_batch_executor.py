"""Batch executor on the in-process and local-pool backends: resumability, retries, fault injection.

Cheap synthetic tasks (:mod:`usnav.batch.synthetic`): each case writes one
seeded array after a short sleep, so every output has a known answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from usnav.batch import (
    EXIT_SOME_FAILED,
    FAILURES_NAME,
    MANIFEST_NAME,
    STAGING_NAME,
    BatchOptions,
    Case,
    read_manifest,
    run_batch,
    verify_record,
)
from usnav.batch.manifest import LOCK_NAME, Manifest
from usnav.batch.synthetic import array_case, array_cases, expected_array
from usnav.errors import InputError

pytestmark = pytest.mark.timeout(120)

QUIET = {"progress": False}


def assert_batch_complete(out: Path, n: int, size: int = 1000) -> None:
    """Exactly the n expected outputs, each verified and equal to its known answer; nothing else."""
    recs = read_manifest(out)
    assert sorted(recs) == [f"case_{i:04d}" for i in range(n)]
    for i in range(n):
        rec = recs[f"case_{i:04d}"]
        assert verify_record(out, rec) is None
        assert list(rec.outputs) == [f"cases/case_{i:04d}.npy"]
        np.testing.assert_array_equal(np.load(out / "cases" / f"case_{i:04d}.npy"), expected_array(i, size))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([MANIFEST_NAME, LOCK_NAME] + [f"cases/case_{i:04d}.npy" for i in range(n)])
    assert not (out / STAGING_NAME).exists()
    # One manifest line per case: nothing duplicated.
    lines = (out / MANIFEST_NAME).read_bytes().splitlines()
    assert len(lines) == n


@pytest.mark.parametrize("workers", [1, 2])
def test_run_and_rerun_skips_everything(tmp_path, workers):
    out = tmp_path / "out"
    report = run_batch(array_case, array_cases(6, sleep_s=0.02, size=200), out, BatchOptions(workers=workers, **QUIET))
    assert len(report.done) == 6 and report.exit_code == 0
    assert report.results["case_0003"]["sum"] == pytest.approx(expected_array(3, 200).sum())
    assert_batch_complete(out, 6, 200)
    again = run_batch(array_case, array_cases(6, sleep_s=0.02, size=200), out, BatchOptions(workers=workers, **QUIET))
    assert (len(again.done), len(again.skipped)) == (0, 6)
    assert again.results == report.results  # kept in the manifest
    assert_batch_complete(out, 6, 200)


def test_pool_and_inline_outputs_identical(tmp_path):
    run_batch(array_case, array_cases(5, size=300), tmp_path / "a", BatchOptions(workers=1, **QUIET))
    run_batch(array_case, array_cases(5, size=300), tmp_path / "b", BatchOptions(workers=2, **QUIET))
    ra, rb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert {k: r.outputs for k, r in ra.items()} == {k: r.outputs for k, r in rb.items()}
    assert {k: r.result for k, r in ra.items()} == {k: r.result for k, r in rb.items()}


def test_truncated_output_is_detected_and_redone(tmp_path):
    out = tmp_path / "out"
    run_batch(array_case, array_cases(5), out, BatchOptions(workers=2, **QUIET))
    victim = out / "cases" / "case_0002.npy"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    (out / "cases" / "case_0004.npy").unlink()  # missing
    report = run_batch(array_case, array_cases(5), out, BatchOptions(workers=2, **QUIET))
    assert sorted(o.key for o in report.done) == ["case_0002", "case_0004"]
    assert len(report.skipped) == 3
    reasons = {o.key: o.redo_reason for o in report.done}
    assert "bytes" in reasons["case_0002"] and "missing" in reasons["case_0004"]
    assert_batch_complete(out, 5)


def test_changed_parameters_are_redone(tmp_path):
    out = tmp_path / "out"
    run_batch(array_case, array_cases(3, size=100), out, BatchOptions(**QUIET))
    report = run_batch(array_case, array_cases(3, size=120), out, BatchOptions(**QUIET))
    assert len(report.done) == 3 and report.done[0].redo_reason == "parameters changed"
    assert_batch_complete(out, 3, 120)


def test_retries_then_failures_file_and_exit_code(tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    cases = [Case(f"case_{i:04d}", {"index": i, "marker_dir": str(marks), "fail_first": 2 if i == 1 else 0})
             for i in range(4)]
    # Two failures but only one retry: case 1 fails, the others finish.
    report = run_batch(array_case, cases, out, BatchOptions(workers=2, retries=1, **QUIET))
    assert [o.key for o in report.failed] == ["case_0001"]
    assert report.failed[0].attempts == 2
    assert len(report.done) == 3 and report.exit_code == EXIT_SOME_FAILED == 3
    failures = json.loads((out / FAILURES_NAME).read_text())["failed"]
    assert failures[0]["key"] == "case_0001" and "fails on attempt 2" in failures[0]["error"]
    assert "Traceback" in failures[0]["traceback"]
    assert not (out / "cases" / "case_0001.npy").exists()  # nothing partial
    # Rerun: case 1 now succeeds on its third attempt overall; the failures file goes away.
    report = run_batch(array_case, cases, out, BatchOptions(workers=2, retries=1, **QUIET))
    assert [o.key for o in report.done] == ["case_0001"] and report.exit_code == 0
    assert not (out / FAILURES_NAME).exists()
    assert sorted(read_manifest(out)) == [f"case_{i:04d}" for i in range(4)]


def test_retry_succeeds_within_budget(tmp_path):
    marks = tmp_path / "marks"
    cases = [Case("case_0000", {"index": 0, "marker_dir": str(marks), "fail_first": 2})]
    report = run_batch(array_case, cases, tmp_path / "out", BatchOptions(retries=2, **QUIET))
    assert report.done[0].attempts == 3 and read_manifest(tmp_path / "out")["case_0000"].attempts == 3


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="unique"):
        run_batch(array_case, [Case("a", {"index": 0}), Case("a", {"index": 1})], tmp_path, BatchOptions(**QUIET))
    with pytest.raises(InputError, match="--workers"):
        run_batch(array_case, array_cases(1), tmp_path, BatchOptions(workers=0, **QUIET))
    with pytest.raises(InputError, match="--retries"):
        run_batch(array_case, array_cases(1), tmp_path, BatchOptions(retries=-1, **QUIET))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        run_batch(array_case, array_cases(1), tmp_path / "file", BatchOptions(**QUIET))
    with Manifest.open(tmp_path / "busy"):
        with pytest.raises(InputError, match="another usnav batch"):
            run_batch(array_case, array_cases(1), tmp_path / "busy", BatchOptions(**QUIET))


def test_ray_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InputError, match=r"pip install -e \.\[ray\]"):
        run_batch(array_case, array_cases(1), tmp_path, BatchOptions(ray_address="local", **QUIET))


def test_cli_ray_missing_exit_2(tmp_path, monkeypatch, capsys):
    from usnav.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    rc = main(["batch", "synthetic", str(tmp_path / "o"), "--cases", "2", "--ray", "local"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --ray needs the optional Ray extra") and "pip install -e .[ray]" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_some_failed_exit_3_and_status(tmp_path, capsys):
    from usnav.cli import main

    out = tmp_path / "o"
    rc = main(["batch", "synthetic", str(out), "--cases", "3", "--sleep-s", "0", "--fail", "1", "--retries", "1"])
    assert rc == 3
    assert "1 failed" in capsys.readouterr().err
    assert main(["batch", "status", str(out)]) == 3
    assert "2 finished cases" in capsys.readouterr().out
    rc = main(["batch", "synthetic", str(out), "--cases", "3", "--sleep-s", "0"])  # "fixed": no --fail
    assert rc == 0 and "1 done, 2 skipped" in capsys.readouterr().err
    assert main(["batch", "status", str(out)]) == 0
    assert main(["batch", "status", str(tmp_path)]) == 2


def _pids_started(marks: Path) -> dict[int, int]:
    """pid -> a case index it started (from the marker files)."""
    out = {}
    for p in marks.glob("*.started"):
        index, pid = p.name.split(".")[:2]
        out[int(pid)] = int(index)
    return out


def test_pool_worker_killed_mid_batch(tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    cases = array_cases(8, sleep_s=0.4, marker_dir=str(marks))
    killed = {}

    def killer():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            for pid, index in _pids_started(marks).items():
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed[pid] = index
                    return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    report = run_batch(array_case, cases, out, BatchOptions(workers=2, **QUIET))
    t.join()
    assert killed, "no worker was killed"
    assert report.exit_code == 0 and len(report.done) == 8
    index = next(iter(killed.values()))
    assert report.outcomes[index].attempts >= 2  # the killed case was run again
    assert_batch_complete(out, 8)


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are neither gone nor zombies."""
    live = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(d.name))
    return live


def test_driver_sigkill_then_rerun(tmp_path):
    """SIGKILL the driver mid-batch; the rerun skips exactly the recorded cases and finishes."""
    out = tmp_path / "out"
    n = 16
    cmd = [sys.executable, "-m", "usnav.cli.batch", "synthetic", str(out), "--cases", str(n), "--sleep-s", "0.25",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(read_manifest(out)) >= 4:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # Pool workers die with their driver (PR_SET_PDEATHSIG): nothing keeps writing.
    deadline = time.monotonic() + 10
    while _live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_group_members(proc.pid) == []
    finished_before = read_manifest(out)
    assert 4 <= len(finished_before) < n
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert rerun.returncode == 0, rerun.stderr
    skipped = len(finished_before)
    assert f"{n - skipped} done, {skipped} skipped" in rerun.stderr
    assert_batch_complete(out, n, 1000)


def test_cpu_case_is_deterministic(tmp_path):
    from usnav.batch.synthetic import cpu_case, cpu_cases

    a = run_batch(cpu_case, cpu_cases(2, n=1000, iterations=3), tmp_path / "a", BatchOptions(**QUIET))
    b = run_batch(cpu_case, cpu_cases(2, n=1000, iterations=3), tmp_path / "b", BatchOptions(workers=2, **QUIET))
    assert [r["mean"] for r in a.results.values()] == [r["mean"] for r in b.results.values()]
    assert all(r["cpu_s"] >= 0 for r in a.results.values())
    assert ((tmp_path / "a/cpu/case_0001.npy").read_bytes() == (tmp_path / "b/cpu/case_0001.npy").read_bytes())


def test_unreachable_ray_cluster_leaves_no_folder(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "new"
    with pytest.raises(InputError, match="no Ray cluster answers"):
        run_batch(array_case, array_cases(2), out, BatchOptions(ray_address="127.0.0.1:1", **QUIET))
    assert not out.exists()


def test_redo_runs_finished_cases_again(tmp_path):
    run_batch(array_case, array_cases(2), tmp_path, BatchOptions(**QUIET))
    report = run_batch(array_case, array_cases(2), tmp_path, BatchOptions(redo=True, **QUIET))
    assert [o.redo_reason for o in report.done] == ["redo requested"] * 2
    assert_batch_complete(tmp_path, 2)
