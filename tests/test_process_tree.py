"""The shared process-tree runner (tests/conftest.py) kills what it started and never hangs."""

import sys
import time
from pathlib import Path

import pytest

# A parent that starts a grandchild in its own session holding stdout, as torchrun does with its workers, then
# both sleep; the grandchild writes its pid first.
SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"],
                         start_new_session=True)
time.sleep(600)
"""


def test_timeout_kills_the_whole_tree_and_fails_with_the_output(process_tree_runner):
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"did not finish in 3 s; killed 2 processes") as failure:
        process_tree_runner([sys.executable, "-c", SCRIPT], timeout=3)
    assert time.monotonic() - start < 30
    grandchild = int(str(failure.value).split("stdout tail:\n")[1].split()[0])
    assert _gone_or_zombie(grandchild)


def _gone_or_zombie(pid: int) -> bool:
    # a killed orphan stays a zombie until whatever adopted it reaps it; it runs no more either way
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_completed_process_keeps_streams_apart(process_tree_runner):
    done = process_tree_runner(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
