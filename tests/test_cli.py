"""The CLI root: version, usage errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

import typer

from usnav import __version__
from usnav.cli import app, main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"usnav {__version__}"


def test_usage_errors_exit_2_without_traceback(capsys):
    assert main(["tusrec", "score"]) == 2  # missing argument
    assert main(["tusrec", "validate", "x", "--no-such-option"]) == 2
    assert main(["simulate", "tusrec", "out", "--frames", "abc"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_exit_code_of_a_command_is_kept():
    @app.command("_exit_code_probe", hidden=True)
    def probe(code: int) -> None:
        raise typer.Exit(code)

    assert main(["_exit_code_probe", "3"]) == 3
    assert main(["_exit_code_probe", "0"]) == 0


def test_console_script_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "usnav.cli", "tusrec", "validate", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "not found" in out.stderr
