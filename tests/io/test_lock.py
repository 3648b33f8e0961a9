"""The output-folder lock: a second run into a held folder fails at once with one line
naming the owner; stale locks are taken over; the lock goes when its run ends."""
from __future__ import annotations

import json
import subprocess
import socket
import sys

import pytest

from raunet_fast.cli import main
from raunet_fast.io.lock import FolderLocked, folder_lock, lock_path

HOLD = """
import sys, time
from raunet_fast.io.lock import folder_lock
with folder_lock(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of tmp_path/out."""
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield out, p
    p.kill()
    p.wait()


def test_second_run_fails_naming_the_owner(holder):
    out, p = holder
    with pytest.raises(FolderLocked, match=f"pid {p.pid}.*holder|holder.*pid {p.pid}"):
        with folder_lock(out, "second"):
            pass
    assert lock_path(out).exists(), "the failed attempt must leave the owner's lock alone"


def test_cli_refuses_a_locked_out_with_one_line(holder, capsys):
    out, p = holder
    rc = main(["make-data", "--kind", "isic2018", "--out", str(out), "--cases", "2", "--shape", "16x16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(p.pid) in err, err
    assert not out.exists() or not any(out.iterdir()), "nothing written into the held folder"


def test_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "command": "gone",
                                          "host": socket.gethostname()}))
    with folder_lock(out, "new") as path:
        assert json.loads(path.read_text())["command"] == "new"
    assert not lock_path(out).exists()


def test_lock_released_after_an_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        with folder_lock(out):
            1 / 0
    assert not lock_path(out).exists()
    with folder_lock(out):   # and can be taken again
        pass


def test_lock_sits_beside_the_folder(tmp_path):
    out = tmp_path / "a" / "out"
    with folder_lock(out) as path:
        assert path.parent == out.parent and path.name == ".out.lock"
        assert not out.exists(), "the folder itself is left to the command"
