"""Training faults leave a run that resumes cleanly (issue 34, points 7, 8, 15 and 17): a full disk, two runs into one
--out, a kill between checkpoints, Ctrl-C, and the CLIP weights asked for without a network."""

import errno
import os
from pathlib import Path

import pytest
import torch

import train
import training.run_files
from test_train import TINY, photo_folder  # noqa: F401 (a fixture)
from training.run_files import read_metrics


def run(out, *extra):
    return train.main(TINY + ["--out", str(out), *extra])


def one_line_error(excinfo):
    message = str(excinfo.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------
# 7. A full disk


def full_disk(real_write, fail):
    """A writer that writes part of its file, then fails as a full disk does: `fail` is the error raised."""
    def write(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)
        raise fail
    return write


TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 8832 vs 8728")


@pytest.mark.parametrize("fail", [OSError(errno.ENOSPC, "No space left on device"), TORCH_FULL], ids=["ENOSPC", "torch"])
def test_a_full_disk_during_a_checkpoint_says_so_and_leaves_the_old_checkpoint_to_resume(tmp_path, monkeypatch, fail):
    out = tmp_path / "run"
    run(out, "--stop-after", "3")
    before = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", full_disk(torch.save, fail))
    with pytest.raises(SystemExit) as excinfo:
        train.main(["--out", str(out), "--resume", "--stop-after", "6"])
    message = one_line_error(excinfo)
    assert str(out / "checkpoint.pt") in message and "untouched" in message, message
    assert ("disk is full" if isinstance(fail, OSError) else "unexpected pos") in message, message
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    train.main(["--out", str(out), "--resume", "--stop-after", "6"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6


def test_a_full_disk_writing_train_config_or_metrics_says_so_and_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out, "--stop-after", "3")
    config, metrics = (out / "train_config.json").read_bytes(), (out / "metrics.jsonl").read_bytes()
    real_write_text = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real_write_text(self, text[:10], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SystemExit) as excinfo:
        train.main(["--out", str(out), "--resume", "--stop-after", "6"])
    assert "train_config.json: not written: the disk is full" in one_line_error(excinfo)
    assert (out / "train_config.json").read_bytes() == config and not list(out.glob("*.tmp"))
    monkeypatch.undo()

    class FullFile:  # a metrics.jsonl that takes half of a line, then finds the disk full
        def __init__(self, path, mode, **kwargs):
            self.f = open(path, mode, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def tell(self):
            return self.f.tell()

        def truncate(self, size):
            return self.f.truncate(size)

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(training.run_files, "open", FullFile, raising=False)
    with pytest.raises(SystemExit) as excinfo:
        train.main(["--out", str(out), "--resume", "--stop-after", "6"])
    assert "metrics.jsonl: not written: the disk is full" in one_line_error(excinfo)
    assert (out / "metrics.jsonl").read_bytes() == metrics


# ----------------------------------------------------------------------------------------------
# 8. Two trainings into one --out


def test_a_second_training_into_the_same_out_is_refused_in_one_line(tmp_path):
    import fcntl

    out = tmp_path / "run"
    run(out, "--stop-after", "3")
    def files():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}

    before = files()
    with open(out / ".lock", "a+") as held:  # another training holds OUT, as a run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("4242\n")
        held.flush()
        for again in ([], ["--resume"]):
            with pytest.raises(SystemExit) as excinfo:
                run(out, "--stop-after", "6", *again)
            assert one_line_error(excinfo) == (f"error: another training is writing to {out} (pid 4242); wait for it "
                                               "or choose another --out")
    assert files() == before
    run(out, "--resume", "--stop-after", "6")  # the lock went with its holder; a finished run leaves none held
    run(out, "--resume", "--stop-after", "7")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 8))


# ----------------------------------------------------------------------------------------------
# 15. Killed between checkpoints, then resumed; Ctrl-C and SIGTERM


def test_a_run_killed_between_checkpoints_and_resumed_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    run(out, "--stop-after", "3")  # the checkpoint is at step 3
    with open(out / "metrics.jsonl", "a") as f:  # steps 4 and 5 logged, then killed halfway through step 6's line
        f.write('{"step": 4, "epoch": 1, "train_loss": 9.0}\n{"step": 5, "epoch": 1, "train_loss": 9.0}\n{"step": 6, "ep')
    train.main(["--out", str(out), "--resume", "--stop-after", "9"])  # crosses the first epoch's end, step 8
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert all(r["train_loss"] != 9.0 for r in rows)  # steps 4 and 5 as the resumed run took them
    assert [r["step"] for r in rows if "val_loss" in r] == [8]


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_sigterm_prints_the_resume_command_in_one_line(tmp_path, sig, code):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "train.py", *TINY, "--epochs", "1000", "--out", str(out),
                              "--checkpoint-every", "1"],
                             cwd=Path(train.__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "checkpoint.pt").exists() and time.time() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), child.communicate()
        child.send_signal(getattr(signal, sig))
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == code, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "--resume" in line]
    assert lines == [f"stopped by {sig}; continue from the last checkpoint with: python train.py --out {out} --resume"]


# ----------------------------------------------------------------------------------------------
# 17. The flickr30k preset's CLIP weights, without a network


def test_the_flickr30k_preset_offline_says_in_one_line_how_to_run_without_the_network(photo_folder, tmp_path):
    import subprocess
    import sys

    folder, captions = photo_folder
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # offline: never downloads, never waits
    done = subprocess.run([sys.executable, "train.py", "--preset", "flickr30k", "--data", str(captions), "--images",
                           str(folder), "--out", str(tmp_path / "run"), "--feature-cache", str(tmp_path / "cache")],
                          cwd=Path(train.__file__).parent, env=env, capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in said and "Retry" not in said, said
    notice = [line for line in said.splitlines() if "first use" in line]
    assert notice and "ViT-B-32" in notice[0] and "about 600 MB" in notice[0] and str(tmp_path / "hf") in notice[0]
    assert said.strip().splitlines()[-1].startswith("error: "), said
    assert "HF_HUB_OFFLINE" in said and "--clip-pretrained FILE" in said and "--clip-pretrained none" in said, said


def test_clip_weights_fail_fast_where_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    import socket
    import time

    import huggingface_hub.constants
    import open_clip

    from model.clip import ClipWeightsError, load_clip_vit

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def never(*args, **kwargs):
        raise AssertionError("open_clip was asked to download")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", never)
    started = time.time()
    with pytest.raises(ClipWeightsError) as excinfo:
        load_clip_vit("ViT-B-32", "openai")
    assert time.time() - started < 5
    message = str(excinfo.value)
    assert "\n" not in message and "huggingface.co cannot be reached" in message and "--clip-pretrained none" in message
