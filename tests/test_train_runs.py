"""Run folders under failures: a run that died in its first epoch resumes (starts over),
leftovers of interrupted writes are removed, a full disk is a one-line error, the learning
rate schedule survives a resume, run.json records each resume; --threads."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch

import raunet_fast
from raunet_fast import cli
from raunet_fast.data import make_isic2018
from raunet_fast.engine import Trainer
from raunet_fast.io.checkpoints import checkpoint_ok, load_training_state
from raunet_fast.io.tables import read_csv

LR = 3e-3
TINY = ["--base-channels", "4", "--depth", "3", "--num-workers", "0", "--no-progress",
        "--device", "cpu", "--lr", str(LR), "--batch-size", "4", "--image-size", "32"]


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic")
    make_isic2018(root, 12, (40, 48), seed=3)  # 8 train, 2 val, 2 test
    return root


def train_args(root: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--dataset", "isic2018", "--data-root", str(root), "--out", str(run),
            "--epochs", str(epochs), *TINY, *extra]


def crash_at(monkeypatch, epoch: int) -> None:
    """The process dies (an exception the CLI does not catch) as ``epoch`` starts."""
    real = Trainer.train_epoch

    def train_epoch(self, e):
        if e == epoch:
            raise RuntimeError("power cut")
        return real(self, e)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def hidden(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def epochs_logged(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in read_csv(run / "log.csv")]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def leave_interrupted_writes(run: Path) -> list[str]:
    """What ``kill -9`` during checkpoint and JSON writes leaves in a run folder."""
    for name in (".best.tmp", ".last.tmp"):
        (run / name).mkdir()
        (run / name / "model.safetensors").write_bytes(b"partial")
    (run / ".run.json.k3j9.tmp").write_text('{"mod')
    return [".best.tmp", ".last.tmp", ".run.json.k3j9.tmp"]


def test_resume_after_a_failure_in_the_first_epoch(isic_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    crash_at(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="power cut"):
        cli.main(train_args(isic_root, run, 2))
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]
    left = leave_interrupted_writes(run)
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh)

    # the same check against run.json as any resume; nothing is touched when it fails
    capsys.readouterr()
    assert cli.main(train_args(isic_root, run, 2, "--resume", "--image-size", "40")) == 2
    assert "image_size" in one_line(capsys)
    assert hidden(run) == left
    # --resume starts it over; the leftovers are gone
    assert cli.main(train_args(isic_root, run, 2, "--resume")) == 0
    assert "starting it over" in capsys.readouterr().out
    assert epochs_logged(run) == [1, 2] and checkpoint_ok(run / "last")
    assert hidden(run) == []
    # a new start without --resume cleans them as well
    assert cli.main(train_args(isic_root, fresh, 2)) == 0
    assert hidden(fresh) == [] and epochs_logged(fresh) == [1, 2]
    # both ran exactly the run they would have run uninterrupted
    a = raunet_fast.from_pretrained(run / "last").state_dict()
    b = raunet_fast.from_pretrained(fresh / "last").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_run_with_a_finished_epoch_is_still_refused_without_resume(isic_root, tmp_path,
                                                                      capsys):
    run = tmp_path / "run"
    assert cli.main(train_args(isic_root, run, 1)) == 0
    shutil.rmtree(run / "last")  # log.csv still says an epoch finished
    capsys.readouterr()
    assert cli.main(train_args(isic_root, run, 2)) == 2
    assert "--resume" in one_line(capsys)
    assert cli.main(train_args(isic_root, run, 2, "--resume")) == 2
    assert "last" in one_line(capsys)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer, target", [
    ("raunet_fast.io.checkpoints.atomic_write_bytes", "last"),  # the training state
    ("raunet_fast.io.tables.atomic_write_bytes", "log.csv"),
])
def test_disk_full_is_one_line_naming_the_path(isic_root, tmp_path, monkeypatch, capsys,
                                               writer, target):
    run = tmp_path / "run"
    assert cli.main(train_args(isic_root, run, 1)) == 0
    monkeypatch.setattr(writer, _no_space)
    capsys.readouterr()
    assert cli.main(train_args(isic_root, run, 2, "--resume")) == 2
    err = one_line(capsys)
    assert str(run / target) in err and "space" in err.lower(), err
    assert hidden(run) == []  # a half-written checkpoint does not keep the space
    monkeypatch.undo()
    # once there is space again the run continues where it stopped
    assert cli.main(train_args(isic_root, run, 2, "--resume")) == 0
    assert epochs_logged(run) == [1, 2]
    assert json.loads((run / "log.json").read_text())[-1]["epoch"] == 2


def test_resume_restores_the_learning_rate_schedule(isic_root, tmp_path, monkeypatch):
    args = ("--scheduler", "cosine", "--patience", "10")
    straight = tmp_path / "straight"
    assert cli.main(train_args(isic_root, straight, 4, *args)) == 0
    lrs = [float(r["lr"]) for r in read_csv(straight / "log.csv")]
    # cosine annealing over 4 epochs: epoch k trains at LR * (1 + cos(pi (k - 1) / 4)) / 2
    assert lrs == pytest.approx([LR * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)],
                                rel=1e-3)

    run = tmp_path / "run"
    crash_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="power cut"):
        cli.main(train_args(isic_root, run, 4, *args))
    monkeypatch.undo()
    assert epochs_logged(run) == [1, 2]
    assert cli.main(train_args(isic_root, run, 4, *args, "--resume")) == 0
    assert [float(r["lr"]) for r in read_csv(run / "log.csv")] == lrs
    resumed = load_training_state(run / "last")
    uninterrupted = load_training_state(straight / "last")
    assert resumed["scheduler"] == uninterrupted["scheduler"]
    assert resumed["optimizer"]["param_groups"] == uninterrupted["optimizer"]["param_groups"]


def test_run_json_records_each_resume(isic_root, tmp_path, capsys):
    first = tmp_path / "first"
    assert cli.main(train_args(isic_root, first, 1)) == 0
    original = json.loads((first / "run.json").read_text())
    assert (original["epochs"], original["out"]) == (1, str(first))
    moved = tmp_path / "moved"
    shutil.move(first, moved)

    assert cli.main(train_args(isic_root, moved, 2, "--resume")) == 0
    assert cli.main(train_args(isic_root, moved, 3, "--resume", "--lr", "1e-3")) == 0
    record = json.loads((moved / "run.json").read_text())
    resumes = record.pop("resumes")
    assert record == original  # the configuration the run started with
    assert [r["from_epoch"] for r in resumes] == [1, 2]
    assert resumes[0]["changed"] == {"epochs": [1, 2], "out": [str(first), str(moved)]}
    assert resumes[1]["changed"] == {"epochs": [1, 3], "out": [str(first), str(moved)],
                                     "lr": [LR, 1e-3]}
    for r in resumes:
        assert datetime.fromisoformat(r["time"]).tzinfo is not None
    # run.json still repeats the run with --config
    capsys.readouterr()
    assert cli.main(["train", "--config", str(moved / "run.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 1


def test_threads_option_of_train_evaluate_predict(isic_root, tmp_path, monkeypatch, capsys):
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    run = tmp_path / "run"
    assert cli.main(train_args(isic_root, run, 1, "--threads", "1")) == 0
    assert calls == [1]
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--no-progress", "--device", "cpu",
                     "--threads", "2"]) == 0
    assert calls == [1, 2]
    images = isic_root / "ISIC2018_Task1-2_Test_Input"
    assert cli.main(["predict", "--checkpoint", str(run / "best"), "--input", str(images),
                     "--out", str(tmp_path / "masks"), "--no-progress", "--device", "cpu",
                     "--threads", "3"]) == 0
    assert calls == [1, 2, 3]
    # not given: torch's own default stays
    assert cli.main(train_args(isic_root, tmp_path / "run2", 1)) == 0
    assert calls == [1, 2, 3]
    capsys.readouterr()
    assert cli.main(train_args(isic_root, tmp_path / "run3", 1, "--threads", "0")) == 2
    assert "threads" in one_line(capsys)
    assert not (tmp_path / "run3").exists()
