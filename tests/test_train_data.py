"""Training data and runs as careless hands leave them: each data error stops train.py with one line naming
the file (no traceback), an empty split is refused before any training, and a torn metrics.jsonl or a
checkpoint naming a model on the hub never costs the run its model or reaches for the network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
import training.setup
from training.run_files import read_metrics
from conftest import within
from test_train import TINY, photo_folder, run  # noqa: F401 - photo_folder is a fixture

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(tmp_path, *args):
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "run", *args)
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_a_caption_file_that_is_not_json_stops_with_one_line_as_a_user_sees_it(photo_folder, tmp_path):
    folder, _ = photo_folder
    (tmp_path / "captions.json").write_text('{"images": [{"filename": "0.jpg",')
    out = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "captions.json"), "--images",
                          str(folder), "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'captions.json'}, line 1: not valid JSON (Expecting"), lines


@pytest.mark.parametrize("edit, message", [
    (lambda images: images[0].update(sentences=["A red picture."]),
     "images[0].sentences[0] is str 'A red picture.'; expected {\"raw\": \"the caption\"}"),
    (lambda images: images[1].update(sentences=[{"raw": 7}]), "an entry of an unexpected shape"),
    (lambda images: images[2].update(filename=None), "an entry of an unexpected shape"),
    (lambda images: images.__setitem__(3, "3.jpg"), "images[3] lacks 'filename' or 'sentences'"),
], ids=["a sentence that is a string", "a caption that is a number", "no file name", "an image that is a string"])
def test_a_caption_file_of_the_wrong_shape_gets_one_line_naming_it(photo_folder, tmp_path, edit, message):
    folder, captions = photo_folder
    data = json.loads(captions.read_text())
    edit(data["images"])
    captions.write_text(json.dumps(data))
    assert message in one_line_error(tmp_path, "--data", str(captions), "--images", str(folder))


def test_an_empty_validation_split_is_refused_before_training(photo_folder, tmp_path):
    folder, captions = photo_folder
    data = json.loads(captions.read_text())
    for image in data["images"]:
        image["split"] = "train"
    captions.write_text(json.dumps(data))
    message = one_line_error(tmp_path, "--data", str(captions), "--images", str(folder))
    assert "the validation split is empty" in message and str(captions) in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # stopped before the first step
    assert "the validation split is empty" in one_line_error(tmp_path, "--shapes-val", "0")


def test_a_torn_metrics_line_costs_a_warning_not_the_model(tmp_path, capsys):
    run(tmp_path, "torn", "--stop-after", "11")
    log = tmp_path / "torn" / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 12, "epoch": 2, "train_lo')  # the run was killed while writing this line
    with open(tmp_path / "copy.jsonl", "w") as f:  # the killed run's log, as a reader of it sees it
        f.write(log.read_text())
    assert len(read_metrics(tmp_path / "copy.jsonl")) == len(log.read_text().splitlines()) - 1
    assert "copy.jsonl, line 12: not a JSON record (cut short?)" in capsys.readouterr().out
    train.main(["--out", str(tmp_path / "torn"), "--resume"])  # the resumed run drops the cut line and logs step 12
    assert "left out 1 records logged after step 11" in capsys.readouterr().out
    assert all(json.loads(line) for line in log.read_text().splitlines())
    assert (tmp_path / "torn" / "model" / "model.safetensors").exists()
    assert (tmp_path / "torn" / "loss_curve.png").exists()


def test_resume_never_downloads(photo_folder, tmp_path, monkeypatch):
    """A checkpoint whose settings name a hub model with download on, and OpenCLIP's downloadable weights:
    --resume takes everything from the checkpoint and opens no connection."""
    folder, captions = photo_folder
    args = ["--data", str(captions), "--images", str(folder), "--encoder", "clip", "--clip-model", "ViT-S-32",
            "--clip-pretrained", "none", "--feature-cache", str(tmp_path / "cache"), "--decoder-width", "32",
            "--decoder-layers", "1", "--decoder-heads", "2", "--epochs", "2", "--batch-size", "6",
            "--warmup-steps", "1", "--out", str(tmp_path / "c")]
    train.main(args + ["--stop-after", "1"])
    path = tmp_path / "c" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["train_config"].update(clip_pretrained="openai", gpt2="distilgpt2", download=True)
    torch.save(state, path)

    def no_network(*args, **kwargs):
        raise AssertionError("--resume reached for the network")

    import socket

    import model.clip

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(training.setup, "hub_download", no_network)
    loads = []
    real = model.clip.load_clip_vit
    monkeypatch.setattr(model.clip, "load_clip_vit", lambda name, pretrained: loads.append(pretrained) or real(name, pretrained))
    trained = train.main(["--out", str(tmp_path / "c"), "--resume"])
    assert loads == [None]  # built empty, then filled with the checkpoint's own CLIP weights
    for name, weight in state["model"].items():
        if name.startswith("encoder."):
            assert torch.equal(trained.state_dict()[name], weight), name


def test_train_and_evaluate_read_an_imagefolder(photo_folder, tmp_path):
    """A folder of images with Hugging Face's metadata.csv beside them: train.py needs no --images, and
    evaluate.py scores a model against it."""
    import evaluate

    folder, captions = photo_folder
    rows = [(image["filename"], sentence["raw"], "validation" if image["split"] == "val" else image["split"])
            for image in json.loads(captions.read_text())["images"] for sentence in image["sentences"]]
    with open(folder / "metadata.csv", "w", newline="") as f:
        f.write("file_name,text,split\n" + "".join(f'{name},"{text}",{split}\n' for name, text, split in rows))
    run(tmp_path, "folder", "--data", str(folder / "metadata.csv"), "--epochs", "1", "--batch-size", "6")
    assert (tmp_path / "folder" / "model" / "model.safetensors").exists()
    scores = evaluate.main([str(folder / "metadata.csv"), "--model", str(tmp_path / "folder" / "model"),
                            "--images", str(folder), "--split", "val"])
    assert set(scores) >= {"BLEU-4", "CIDEr-D"}


def test_a_named_pipe_among_the_training_images_is_named_in_one_line(photo_folder, tmp_path, capsys):
    """A metadata.csv naming a named pipe hung train.py while it read the images: opening a pipe waits for a
    writer (issue 34, point 14). It is no image file: the run stops in one line naming it, as for a missing
    image, and --skip-missing trains without it."""
    folder, captions = photo_folder
    rows = [(image["filename"], sentence["raw"], image["split"])
            for image in json.loads(captions.read_text())["images"] for sentence in image["sentences"]]
    os.mkfifo(folder / "pipe.jpg")
    rows.append(("pipe.jpg", "A pipe.", "train"))
    (folder / "metadata.csv").write_text("file_name,text,split\n" + "".join(f"{n},{t},{s}\n" for n, t, s in rows))
    with within(60):
        with pytest.raises(SystemExit, match=r"1 of 14 captioned images are missing \(first: pipe.jpg\); pass --skip-missing"):
            train.main(TINY + ["--out", str(tmp_path / "folder"), "--data", str(folder / "metadata.csv"), "--batch-size", "6"])
        run(tmp_path, "folder", "--data", str(folder / "metadata.csv"), "--batch-size", "6", "--stop-after", "1",
            "--skip-missing")
    assert torch.load(tmp_path / "folder" / "checkpoint.pt", weights_only=True)["step"] == 1  # it trained


def test_every_run_writes_its_settings_and_config_starts_a_run_from_them(tmp_path, capsys):
    run(tmp_path, "first", "--stop-after", "1", "--lr", "0.002")
    saved = json.loads((tmp_path / "first" / "train_config.json").read_text())
    assert saved["lr"] == 0.002 and saved["decoder"]["width"] == 32 and saved["vit"]["layers"] == 1
    config = train.parse_args(["--config", str(tmp_path / "first" / "train_config.json"), "--out", str(tmp_path / "b"),
                               "--decoder-layers", "2"])
    assert config.lr == 0.002 and config.vit.layers == 1 and config.decoder.width == 32  # from the file
    assert config.decoder.layers == 2 and config.out == str(tmp_path / "b")  # the flags change it
    (tmp_path / "bad.json").write_text(json.dumps(dict(saved, decoder=dict(saved["decoder"], layers=10**6))))
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(tmp_path / "bad.json")])
    assert "bad.json, decoder: layers must be a number from 1 to 128" in capsys.readouterr().err


def test_tensorboard_logs_what_a_user_watches(tmp_path):
    """--tensorboard: the run's event file, read back with TensorBoard's own reader, holds the training loss
    and learning rate every step, every validation score every epoch, sample captions and an attention picture;
    metric_curves.png is drawn beside loss_curve.png."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="tensorboard is not installed")
    run(tmp_path, "board", "--tensorboard")
    log = event_accumulator.EventAccumulator(str(tmp_path / "board" / "tensorboard"),
                                             size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    log.Reload()
    tags = log.Tags()
    assert {"train/loss", "lr", "validation/CIDEr-D", "validation/BLEU-4", "validation/loss"} <= set(tags["scalars"])
    assert len(log.Scalars("train/loss")) == 16 and len(log.Scalars("validation/CIDEr-D")) == 2  # 8 steps an epoch
    assert "validation/attention" in tags["images"] and "validation/captions/text_summary" in tags["tensors"]
    assert (tmp_path / "board" / "metric_curves.png").exists()


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("torch.utils.tensorboard") else real_import(name, *a, **k))
    run(tmp_path, "none", "--tensorboard", "--stop-after", "2")
    assert "warning: --tensorboard needs `pip install tensorboard`; logging to metrics.jsonl only" in capsys.readouterr().out


def coco_layout(tmp_path):
    """README's COCO layout, small: images/train2014/ and images/val2014/ with COCO's file names, and a Karpathy
    dataset_coco.json naming each by filepath and filename; one more entry names a photo outside images/."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    entries = []
    for i in range(12):
        colour, part = list(colours)[i % 3], "train2014" if i < 9 else "val2014"
        (tmp_path / "images" / part).mkdir(parents=True, exist_ok=True)
        name = f"COCO_{part}_{i:012d}.jpg"
        Image.new("RGB", (40, 30), colours[colour]).save(tmp_path / "images" / part / name)
        entries.append({"filepath": part, "filename": name, "split": "train" if i < 9 else "val",
                        "sentences": [{"raw": f"A {colour} picture."}]})
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "outside.jpg")
    entries.append({"filepath": "..", "filename": "outside.jpg", "split": "train", "sentences": [{"raw": "Out."}]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return tmp_path / "images", tmp_path / "dataset_coco.json"


def test_train_and_evaluate_read_cocos_subfolders(tmp_path, capsys):
    """Every image was 'missing' ("13 of 13 captioned images are missing"): only the folder's own entries
    were looked at. The name that leaves images/ stays missing, though its file exists."""
    import evaluate

    images, captions = coco_layout(tmp_path)
    assert "1 of 13 captioned images are missing (first: ../outside.jpg)" in one_line_error(
        tmp_path, "--data", str(captions), "--images", str(images))
    run(tmp_path, "coco", "--data", str(captions), "--images", str(images), "--skip-missing", "--epochs", "1",
        "--batch-size", "6")
    assert f"skipping 1 captioned images missing from {images}" in capsys.readouterr().out
    scores = evaluate.main([str(captions), "--model", str(tmp_path / "coco" / "model"), "--images", str(images),
                            "--split", "val", "--no-java"])
    assert "3 images" in capsys.readouterr().out and set(scores) >= {"BLEU-4", "CIDEr-D"}
    evaluate.main([str(captions), "--model", str(tmp_path / "coco" / "model"), "--images", str(images), "--no-java"])
    shown = capsys.readouterr()
    assert "12 images" in shown.out and f"skipped ../outside.jpg: not a name inside {images}" in shown.err


def test_train_and_evaluate_read_an_imagefolder_with_subfolders(tmp_path, capsys):
    """metadata.csv naming sub/x.png, as Hugging Face's imagefolder allows."""
    import evaluate

    images, _ = coco_layout(tmp_path)
    rows = [f"{part.name}/{p.name},A picture.,{'train' if part.name == 'train2014' else 'validation'}\n"
            for part in sorted(images.iterdir()) for p in sorted(part.iterdir())]
    (images / "metadata.csv").write_text("file_name,text,split\n" + "".join(rows))
    run(tmp_path, "folder", "--data", str(images / "metadata.csv"), "--epochs", "1", "--batch-size", "6")
    scores = evaluate.main([str(images / "metadata.csv"), "--model", str(tmp_path / "folder" / "model"),
                            "--images", str(images), "--split", "val", "--no-java"])
    assert "3 images" in capsys.readouterr().out and set(scores) >= {"BLEU-4", "CIDEr-D"}
