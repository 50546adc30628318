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


def test_finding_9_an_output_path_under_a_file_is_one_line_naming_it_exit_2(tmp_path):
    from facepipe.cli import main

    src = tmp_path / "faces" / "ann"
    src.mkdir(parents=True)
    (tmp_path / "afile").write_text("")
    out = str(tmp_path / "afile" / "out")
    for argv in (["pack", str(src.parent), out], ["train-recognition", str(tmp_path), out],
                 ["train-detection", str(tmp_path), out], ["storage", "cp", str(src.parent), out]):
        res = run(*argv)
        assert res.returncode == 2, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and f"{tmp_path / 'afile'}" in res.stderr, res.stderr
        assert "Not a directory" in res.stderr and "Traceback" not in res.stderr
    assert main(["pack", str(src.parent), out]) == 2  # in process too (the same error path)


def test_finding_9_a_corrupt_run_json_is_named_by_rerun_and_runs(tmp_path, capsys):
    from facepipe.cli import main

    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "run.json").write_text('{"id": "r1", "status": ')
    assert main(["rerun", "pack", "--from", "r1", "--runs-dir", str(tmp_path / "runs"), "--no-track"]) == 2
    assert f"{tmp_path / 'runs' / 'r1' / 'run.json'}: corrupt run record (JSONDecodeError" in capsys.readouterr().err
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "r1/run.json: corrupt run record" in capsys.readouterr().err
