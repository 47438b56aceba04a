"""torchrun + DistributedDataParallel on the CPU (gloo): two processes take the step one process takes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from tests.test_train import TINY
from training.setup import start_processes

ROOT = Path(__file__).resolve().parents[1]
# test_train's small run, without dropout (its masks depend on how a batch is split over processes), for
# three epochs: 256 captions in batches of 32, 8 steps an epoch.
SMALL = TINY + ["--decoder-dropout", "0", "--epochs", "3"]


def torchrun(processes, *args, script="train.py"):
    """`torchrun --standalone --nproc_per_node N train.py ...` as a user types it; returns the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on two cores: one thread each
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", script, *SMALL, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def final_weights(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    """Equal within 1e-5, except the key biases of attention: a key bias adds the same number to all of
    a query's scores, which softmax ignores, so its true gradient is exactly zero. What reaches it is
    rounding noise, and Adam, dividing by that noise's own size, turns it into steps of about the
    learning rate that differ from run to run (measured: 3e-5 there, 1e-8 everywhere else)."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("in_proj_bias"):  # rows: query, key, value biases
            x, y = x.view(3, -1)[[0, 2]], y.view(3, -1)[[0, 2]]
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The run in one process, without torchrun: what the runs under torchrun must equal."""
    out = tmp_path_factory.mktemp("one")
    train.main(SMALL + ["--out", str(out)])
    return out


def test_two_processes_train_the_weights_one_process_trains(one_process, tmp_path):
    done = torchrun(2, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = final_weights(one_process), final_weights(tmp_path / "two")
    assert torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["step"] == 24
    assert_same_weights(one, two)
    logs = [(out / "metrics.jsonl").read_text().splitlines() for out in (one_process, tmp_path / "two")]
    assert len(logs[0]) == len(logs[1]) == 24 + 1  # every step once (one writer), then the test scores
    assert sum("val_loss" in json.loads(line) for line in logs[1]) == 3  # one validation an epoch
    for a, b in zip(map(json.loads, logs[0][:-1]), map(json.loads, logs[1][:-1])):
        assert a["step"] == b["step"] and abs(a["train_loss"] - b["train_loss"]) < 1e-4  # the global batch's mean
        assert ("val_loss" in a) == ("val_loss" in b)  # validated once an epoch, by process 0, with one's figures
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) < 1e-4 and a["val_exact"] == b["val_exact"]
            assert abs(a["val_CIDEr-D"] - b["val_CIDEr-D"]) < 1e-3
    assert done.stdout.count("test split") == 1  # one process printed the results


def test_a_run_stopped_under_two_processes_resumes_in_one(one_process, tmp_path):
    stopped = torchrun(2, "--out", str(tmp_path / "switched"), "--stop-after", "12")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    train.main(["--out", str(tmp_path / "switched"), "--resume"])
    assert_same_weights(final_weights(one_process), final_weights(tmp_path / "switched"))


def test_a_batch_that_does_not_split_over_the_processes_stops_every_process_in_one_line(monkeypatch):
    """Checked before the processes wait for each other, so each stops at once (torchrun then ends the run)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="--batch-size 31 does not split evenly over 2 processes"):
        start_processes(train.parse_args(SMALL + ["--batch-size", "31"]))


FAILS_IN_PROCESS_1 = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import train
import training.loop

real_step = training.loop.train_step


def step_that_fails_in_process_1(*args, **kwargs):
    if os.environ["RANK"] == "1":
        raise RuntimeError("process 1 broke on purpose")
    return real_step(*args, **kwargs)


training.loop.train_step = step_that_fails_in_process_1
train.command()
"""


def test_one_failing_process_ends_the_whole_run_with_its_error(tmp_path):
    """Process 0 would wait for process 1's gradients forever; torchrun must stop it and name process 1's error
    (the subprocess's timeout turns a hang into a failure)."""
    script = tmp_path / "fails_in_process_1.py"
    script.write_text(FAILS_IN_PROCESS_1)
    done = torchrun(2, "--out", str(tmp_path / "out"), script=str(script))
    assert done.returncode != 0
    summary = done.stderr[done.stderr.index("Root Cause"):]  # torchrun's closing summary
    assert "rank      : 1" in summary and "RuntimeError: process 1 broke on purpose" in summary
