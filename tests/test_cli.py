"""The facepipe entry point: help, unknown commands, user errors exit 2 without a traceback."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "facepipe.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


def test_unknown_command_is_rejected():
    out = run("no-such-command")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
