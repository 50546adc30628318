"""`kill -9` of `facepipe run`: its step processes end too (nothing keeps training unrecorded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from facepipe.orchestration.component_runtime import RUN_PID_ENV


def test_finding_12_a_step_ends_when_its_run_is_killed_with_sigkill(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands for `facepipe run`
    # a step that prints nothing (a broken stdout pipe would not end it) and would run for 10 minutes
    step = subprocess.Popen([sys.executable, "-c", "import os, time\n"
                             "from facepipe.orchestration.component_runtime import _end_with\n"
                             f"_end_with(int(os.environ[{RUN_PID_ENV!r}]), every_s=0.1)\n"
                             "open(os.environ['READY'], 'w').close()\n"
                             "time.sleep(600)"],
                            env={**os.environ, RUN_PID_ENV: str(run.pid), "READY": str(tmp_path / "ready")})
    try:
        while not (tmp_path / "ready").exists():
            assert step.poll() is None, "the step died before its run was killed"
            time.sleep(0.05)
        run.kill()  # SIGKILL: no handler in the run can tell its steps
        run.wait()
        assert step.wait(timeout=60) == -signal.SIGTERM
    finally:
        for proc in (run, step):
            if proc.poll() is None:
                proc.kill()
