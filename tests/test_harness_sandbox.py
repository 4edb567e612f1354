"""The sandbox process protocol: replies, timeouts, crashes, grandchildren, unreadable replies."""

from __future__ import annotations

import os
import sys
import textwrap
import time

from usnav.harness.sandbox import Sandbox, describe_exit

WORKER = textwrap.dedent('''
    import json, os, sys, time
    args = sys.argv[1:]
    req = os.fdopen(int(args[args.index("--request-fd") + 1]), "r")
    rep = os.fdopen(int(args[args.index("--reply-fd") + 1]), "w", buffering=1)
    print("worker started")               # goes to the log, not the protocol
    rep.write(json.dumps({"event": "ready"}) + "\\n"); rep.flush()
    for line in req:
        what = json.loads(line)["do"]
        if what == "echo":
            rep.write(json.dumps({"event": "done", "pid": os.getpid()}) + "\\n"); rep.flush()
        elif what == "sleep":
            time.sleep(600)
        elif what == "fork-and-die":
            if os.fork() == 0:            # a grandchild keeps the reply pipe open
                time.sleep(600)
                os._exit(0)
            os._exit(7)
        elif what == "garbage":
            rep.write("not json\\n"); rep.flush()
''')


def _sandbox(tmp_path) -> Sandbox:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return Sandbox([sys.executable, str(script)], tmp_path / "log.txt", startup_timeout_s=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_reply_timeout_and_restart(tmp_path):
    with _sandbox(tmp_path) as box:
        assert box.start().reply == {"event": "ready"}
        first = box.call({"do": "echo"}, timeout_s=10)
        assert first.status == "ok" and first.reply["event"] == "done"
        t0 = time.monotonic()
        slow = box.call({"do": "sleep"}, timeout_s=0.5)
        assert slow.status == "timeout" and "time limit of 0.5 s" in slow.message
        assert time.monotonic() - t0 < 5 and not box.alive and not _alive(first.reply["pid"])
        assert box.start().status == "ok"
        assert box.call({"do": "echo"}, timeout_s=10).reply["pid"] != first.reply["pid"]
    assert "worker started" in (tmp_path / "log.txt").read_text()


def test_crash_detected_even_if_a_grandchild_holds_the_pipe(tmp_path):
    with _sandbox(tmp_path) as box:
        box.start()
        t0 = time.monotonic()
        res = box.call({"do": "fork-and-die"}, timeout_s=60)
        assert res.status == "crash" and "exit code 7" in res.message
        assert time.monotonic() - t0 < 10  # not the 60 s time limit
        assert not box.alive


def test_unreadable_reply_is_a_crash(tmp_path):
    with _sandbox(tmp_path) as box:
        box.start()
        res = box.call({"do": "garbage"}, timeout_s=10)
        assert res.status == "crash" and "unreadable reply" in res.message
        assert box.call({"do": "echo"}, timeout_s=1).status == "crash"  # not running any more


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(None) == "no exit status"
