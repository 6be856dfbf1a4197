"""Workers never outlive their study: SIGTERM or SIGHUP to a ``--executor processes`` run shuts the
pool down, and no child process survives (issue 19, item 7)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sepmeasure.study import StudyTerminated, TerminationSignals

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, sys, time
from pathlib import Path
from sepmeasure.study import Study
import sepmeasure.cli

def run_one(config):
    started = Path(sys.argv[1])
    started.mkdir(parents=True, exist_ok=True)
    (started / str(os.getpid())).touch()
    time.sleep(60)
    return [{"x": config["x"]}]

STUDY = Study(name="sleepy", run_one=run_one, quick={"x": [0, 1, 2, 3]}, full={"x": [0]},
              seeds={"quick": 1, "full": 1})

if __name__ == "__main__":
    sepmeasure.cli.run_study_script(STUDY, ["--executor", "processes", "--workers", "2", "--no-progress",
                                            "--no-report", "--out", sys.argv[2]])
"""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sighup_and_sigterm_raise_study_terminated_while_installed_and_are_restored_after():
    before = signal.getsignal(signal.SIGHUP)
    for signum in (signal.SIGHUP, signal.SIGTERM):
        with pytest.raises(StudyTerminated) as info:
            with TerminationSignals():
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler raises before this ends
        assert info.value.signum == signum
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_to_a_process_pool_study_leaves_no_child_alive(tmp_path, signum):
    script = tmp_path / "s1_sleepy.py"
    script.write_text(SCRIPT)
    started = tmp_path / "started"
    log = tmp_path / "stderr.txt"
    with log.open("w") as err_file:  # not a pipe: surviving children would hold it open
        proc = subprocess.Popen([sys.executable, str(script), str(started), str(tmp_path / "out")],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                stderr=err_file, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(started.glob("*"))) < 2:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert len(list(started.glob("*"))) == 2, "the workers did not start"
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = {int(p.name) for p in started.iterdir()}
        assert workers <= {c.pid for c in children}
        proc.send_signal(signum)
        proc.wait(timeout=30)
        assert proc.returncode != 0
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)
        survivors = [c.pid for c in children if _alive(c)]
        assert not survivors, f"children alive after {signal.Signals(signum).name}: {survivors}\n{log.read_text()}"
    finally:
        for c in children:  # the processes this test started, should the check fail
            if _alive(c):
                c.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
