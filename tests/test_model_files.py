"""Model files anyone can share: a model folder (config.json + model.safetensors) and training checkpoints
read with torch.load(weights_only=True). A hostile file runs no code on any path a user has; a broken one
gets one line naming the file. The Python API captions from the folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import generate
import train
from captioner import Captioner
from captioner.convert import main as convert
from data.shapes import make_split
from model.checkpoint import CheckpointError


class WritesAFile:
    """Unpickling this object writes a file: what a hostile checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('this ran')",)


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(make_split("test", 1, 32)[0].image).resize((96, 96), Image.NEAREST).save(path)
    return path


@pytest.fixture
def hostile(shapes_checkpoint, tmp_path):
    """A real checkpoint with one extra pickled object that writes `marker` when it is unpickled."""
    marker = tmp_path / "marker.txt"
    state = torch.load(shapes_checkpoint, weights_only=True)
    state["extra"] = WritesAFile(marker)
    path = tmp_path / "hostile.pt"
    torch.save(state, path)
    return path, marker


def test_the_hostile_checkpoint_really_runs_code_when_unpickled(hostile):
    path, marker = hostile
    torch.load(path, weights_only=False)  # what this project no longer does anywhere
    assert marker.read_text() == "this ran"


def one_line_naming(message, path):
    return str(path) in message and "\n" not in message


def test_hostile_checkpoint_is_refused_on_every_path(hostile, scene_png, tmp_path, capsys):
    path, marker = hostile
    with pytest.raises(SystemExit) as error:  # generate.py
        generate.main([str(path), str(scene_png)])
    assert "refused" in str(error.value.code) and one_line_naming(str(error.value.code), path)
    with pytest.raises(CheckpointError, match="refused") as error:  # the Python API, as the notebooks use it
        Captioner.from_pretrained(path)
    assert one_line_naming(str(error.value), path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(path.read_bytes())
    with pytest.raises(SystemExit, match="refused"):  # train.py --resume
        train.main(["--out", str(run), "--resume"])
    with pytest.raises(SystemExit, match="--trust-pickle"):  # the conversion command, without consent
        convert([str(path), str(tmp_path / "converted")])
    assert not marker.exists()


def test_hostile_weights_file_in_a_model_folder_is_refused(shapes_model, hostile, scene_png, tmp_path):
    path, marker = hostile
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((shapes_model / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(path.read_bytes())  # a pickle where the weights should be
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as error:
        Captioner.from_pretrained(folder)
    assert one_line_naming(str(error.value), folder / "model.safetensors")
    with pytest.raises(SystemExit, match="not a readable safetensors file"):
        generate.main([str(folder), str(scene_png)])
    assert not marker.exists()


def broken_folder(shapes_model, tmp_path, edit_config=None, edit_weights=None):
    folder = tmp_path / "broken"
    folder.mkdir()
    config = json.loads((shapes_model / "config.json").read_text())
    weights = load_file(shapes_model / "model.safetensors")
    if edit_config:
        edit_config(config)
    if edit_weights:
        edit_weights(weights)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("edit_config, edit_weights, file, message", [
    (None, lambda w: w.update({"decoder.ln_f.weight": torch.ones(7)}), "model.safetensors",
     "weights do not fit the configuration"),
    (None, lambda w: w.pop("decoder.ln_f.bias"), "model.safetensors", "missing key decoder.ln_f.bias"),
    (lambda c: c.pop("tokenizer"), None, "config.json", "missing field 'tokenizer'"),
    (lambda c: c.update(colour="red"), None, "config.json", "unknown field 'colour'"),
    (lambda c: c["model"]["decoder"].pop("width"), None, "config.json", "missing field 'width'"),
    (lambda c: c["model"]["vit"].update(depth=3), None, "config.json", "unknown field 'depth'"),
    (lambda c: c["model"]["decoder"].update(layers="two"), None, "config.json", "'layers' should be int"),
    (lambda c: c.update(format="something-else"), None, "config.json", "not a captioner model config"),
    (lambda c: c["tokenizer"].pop("words"), None, "config.json", "tokenizer: expected"),
])
def test_broken_model_folders_get_one_line_naming_the_file(shapes_model, tmp_path, edit_config, edit_weights, file,
                                                           message):
    folder = broken_folder(shapes_model, tmp_path, edit_config, edit_weights)
    with pytest.raises(CheckpointError, match=message) as error:
        Captioner.from_pretrained(folder)
    assert one_line_naming(str(error.value), folder / file)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_folder_missing_either_file(shapes_model, tmp_path, missing):
    folder = broken_folder(shapes_model, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match="missing") as error:
        Captioner.from_pretrained(folder)
    assert one_line_naming(str(error.value), folder / missing)


def test_config_json_that_is_not_json(shapes_model, tmp_path):
    folder = broken_folder(shapes_model, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Captioner.from_pretrained(folder)


def test_the_main_job_leaves_a_model_folder_that_holds_no_code(shapes_model):
    assert sorted(p.name for p in shapes_model.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((shapes_model / "config.json").read_text())
    assert config["format"] == "captioner-model" and config["tokenizer"]["kind"] == "word"
    assert (shapes_model / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors: a JSON header, then bytes


def test_api_captions_paths_pil_images_and_batches(shapes_model, scene_png):
    captioner = Captioner.from_pretrained(shapes_model)
    scene = make_split("test", 1, 32)[0]
    text = captioner.caption(scene_png)
    assert isinstance(text, str) and text in scene.captions
    image = Image.open(scene_png)
    assert captioner.caption(image) == text  # a PIL image
    assert captioner.caption([scene_png, image, str(scene_png)]) == [text] * 3  # a batch of either
    assert captioner.caption(scene_png, beam=3).split()[:3] == text.split()[:3]
    sampled = captioner.caption(scene_png, temperature=1.0, num=3)
    assert len(sampled) == 3 and all(isinstance(s, str) for s in sampled)
    assert captioner.caption(scene_png, temperature=1.0, num=3) == sampled  # seeded: the same call, the same captions
    with pytest.raises(ValueError, match="num > 1 needs sampling"):
        captioner.caption(scene_png, num=2)
    # A region's caption names the object inside it. The model never trained on regions, so one region can
    # miss on one CPU and not on another (float order changes the trained weights): judged on 12 regions.
    scenes = [s for s in make_split("test", 40, 32) if len(s.objects) == 2][:6]
    named = sum(f"{obj.colour} {obj.shape}" in captioner.caption(
        Image.fromarray(s.image).resize((96, 96), Image.NEAREST), region=tuple(3 * v for v in obj.box))
        for s in scenes for obj in s.objects)
    assert named >= 10, f"{named} of 12 region captions name the object in the region"


def test_save_pretrained_round_trip(shapes_model, scene_png, tmp_path):
    captioner = Captioner.from_pretrained(shapes_model)
    captioner.save_pretrained(tmp_path / "copy")
    again = Captioner.from_pretrained(tmp_path / "copy")
    for name, tensor in captioner.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert again.caption(scene_png, beam=2) == captioner.caption(scene_png, beam=2)
    assert not list((tmp_path / "copy").glob("*.tmp"))  # written to temporary files, then renamed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_follows_the_model(shapes_model, scene_png):
    captioner = Captioner.from_pretrained(shapes_model)
    on_cpu = captioner.caption(scene_png)
    assert captioner.to("cuda").device.type == "cuda"
    assert captioner.caption(scene_png) == on_cpu


def test_convert_an_old_checkpoint(shapes_checkpoint, shapes_model, scene_png, tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "captioner.convert", str(shapes_checkpoint), str(tmp_path / "a")],
                   check=True, capture_output=True, cwd=root)
    converted = Captioner.from_pretrained(tmp_path / "a")
    assert converted.caption(scene_png) == Captioner.from_pretrained(shapes_model).caption(scene_png)
    # A checkpoint of the old format may carry other pickled objects: converted only with consent.
    state = torch.load(shapes_checkpoint, weights_only=True)
    state["args"] = {"note": __import__("types").SimpleNamespace(lr=0.1)}  # harmless, but not a plain value
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(SystemExit, match="--trust-pickle"):
        convert([str(old), str(tmp_path / "b")])
    convert([str(old), str(tmp_path / "b"), "--trust-pickle"])
    assert Captioner.from_pretrained(tmp_path / "b").caption(scene_png) == converted.caption(scene_png)


def test_a_model_without_an_image_encoder_is_refused_by_every_command_that_reads_images(shapes_model, scene_png,
                                                                                        tmp_path, capsys):
    import evaluate
    import serve

    captioner = Captioner.from_pretrained(shapes_model)
    captioner.model.encoder, captioner.model.config.vit = None, None  # reads precomputed features only
    folder = tmp_path / "features-only"
    captioner.save_pretrained(folder)
    assert Captioner.from_pretrained(folder).model.encoder is None  # fine for features
    (tmp_path / "refs.json").write_text(json.dumps({"images": [
        {"filename": scene_png.name, "split": "test", "sentences": [{"raw": "a scene"}]}]}))  # Karpathy's format
    for command in (lambda: generate.main([str(folder), str(scene_png)]),
                    lambda: serve.main([str(folder)]),
                    lambda: evaluate.main(["--model", str(folder), "--images", str(scene_png.parent),
                                           str(tmp_path / "refs.json")])):
        with pytest.raises(SystemExit) as stop:
            command()
        assert str(stop.value) == f"error: {folder} has no image encoder (it reads precomputed features), " \
                                  "so it cannot caption image files"


def test_auto_picks_cuda_then_a_macs_mps_then_the_cpu(monkeypatch):
    from captioner.cli import pick_device

    for cuda, mps, expected in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no Apple MPS device on this machine")
def test_a_macs_gpu_captions_like_the_cpu(shapes_model, scene_png):
    assert (Captioner.from_pretrained(shapes_model, "mps").caption(scene_png)
            == Captioner.from_pretrained(shapes_model).caption(scene_png))


def test_a_model_folder_from_before_the_newer_settings_still_loads(shapes_model, scene_png, tmp_path):
    """Folders written before the decoder's gelu, patch_proj, gpt_prefix and mapper_layers and the ViT's patch_bias, ln_pre,
    norm_eps and class_token_in_memory existed load with those settings' defaults: how such models ran."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(shapes_model, old)
    config = json.loads((old / "config.json").read_text())
    for part, names in (("decoder", ("gelu", "patch_proj", "gpt_prefix", "mapper_layers")),
                        ("vit", ("patch_bias", "ln_pre", "norm_eps", "class_token_in_memory"))):
        for name in names:
            del config["model"][part][name]
    (old / "config.json").write_text(json.dumps(config))
    assert Captioner.from_pretrained(old).caption(scene_png) == Captioner.from_pretrained(shapes_model).caption(scene_png)
