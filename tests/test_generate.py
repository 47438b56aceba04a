"""generate.py and the Python API: captions from a model folder or a checkpoint, attention pictures,
region-focused captions, clear errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import generate
from captioner import Captioner
from data.shapes import make_split
from model.compiled import compile_steps
from model.rollout import attention_rollout

ROOT = Path(__file__).resolve().parents[1]
SCALE = 4  # scenes are drawn at 32 px and saved at 128 px, as a user's larger photo would be


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    scenes = make_split("test", 60, 32)
    for i, s in enumerate(scenes):
        Image.fromarray(s.image).resize((32 * SCALE, 32 * SCALE), Image.NEAREST).save(folder / f"{i:02d}.png")
    return folder, scenes


def test_folder_with_an_unreadable_image(shapes_model, scenes, tmp_path, capsys):
    folder, truth = scenes
    work = tmp_path / "imgs"
    work.mkdir()
    for i in range(4):
        (work / f"{i:02d}.png").write_bytes((folder / f"{i:02d}.png").read_bytes())
    (work / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(SystemExit) as exit_status:
        generate.main([str(shapes_model), str(work), "--json", str(tmp_path / "c.json"),
                       "--csv", str(tmp_path / "c.csv")])
    assert exit_status.value.code == 1  # non-zero at the end...
    out, err = capsys.readouterr()
    assert "broken.png: not an image file" in err and err.count("\n") == 2  # ...after one line naming it
    results = json.loads((tmp_path / "c.json").read_text())
    assert [r["image"].split("/")[-1] for r in results] == [f"{i:02d}.png" for i in range(4)]  # the rest captioned
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert [r["caption"] for r in rows] == [r["captions"][0] for r in results]
    correct = sum(r["captions"][0] in s.captions for r, s in zip(results, truth))
    assert correct >= 3
    assert "00.png" in out


def test_sampling_several_captions_and_beam(shapes_model, scenes):
    folder, _ = scenes
    sampled = generate.main([str(shapes_model), str(folder / "00.png"), "--temperature", "1.5", "--num", "4",
                             "--top-k", "5"])
    assert len(sampled[0]["captions"]) == 4
    beam = generate.main([str(shapes_model), str(folder / "00.png"), "--beam", "3"])
    greedy = generate.main([str(shapes_model), str(folder / "00.png")])
    assert beam[0]["captions"][0].split()[:3] == greedy[0]["captions"][0].split()[:3]


def test_decoding_options_are_built_once_and_reach_the_sampler_as_one_object(shapes_model, scenes, monkeypatch):
    """generate.py builds one DecodingOptions from its flags and hands that object through the Python API to the
    model's decode(); nothing turns it into a dict and back. The API refuses an object and keywords at once."""
    import model.caption_model
    from model.sampling import DecodingOptions, decode

    folder, _ = scenes
    built, decoded = [], []
    real_init = DecodingOptions.__post_init__
    monkeypatch.setattr(DecodingOptions, "__post_init__", lambda self: (built.append(self), real_init(self))[1])
    monkeypatch.setattr(model.caption_model, "decode", lambda *args, **kw: (decoded.append(args[5]), decode(*args, **kw))[1])
    generate.main([str(shapes_model), str(folder / "00.png"), str(folder / "01.png"), "--beam", "2", "--batch-size", "1"])
    assert len(built) == 1 and built[0].beam == 2
    assert len(decoded) == 2 and all(options is built[0] for options in decoded)  # one object, every batch
    with pytest.raises(TypeError, match="not both"):
        Captioner.from_pretrained(shapes_model).caption(str(folder / "00.png"), options=built[0], beam=3)


def test_repetition_controls_reach_generate_and_stop_the_one_pixel_stutter(shapes_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "pixel.png")  # nothing like the training scenes
    image = str(tmp_path / "pixel.png")
    for flags in (["--no-repeat-ngram-size", "1"], ["--no-repeat-ngram-size", "1", "--beam", "3"],
                  ["--no-repeat-ngram-size", "1", "--temperature", "1.0"]):
        words = generate.main([str(shapes_model), image, *flags])[0]["captions"][0].split()
        assert len(words) == len(set(words)), (flags, words)  # no word twice
    plain = generate.main([str(shapes_model), image])[0]["captions"][0].split()
    penalised = generate.main([str(shapes_model), image, "--repetition-penalty", "3"])[0]["captions"][0].split()
    assert penalised != plain or len(plain) == len(set(plain))  # the penalty reaches the sampler


def box_around(obj, margin=2):
    x0, y0, x1, y1 = obj.box
    return ",".join(str(v * SCALE) for v in (max(0, x0 - margin), max(0, y0 - margin), x1 + 1 + margin, y1 + 1 + margin))


def test_a_box_around_one_object_captions_that_object_and_not_the_other(shapes_model, scenes):
    """Region captions on 48 two-object scenes, a box around each object in turn (96 captions).

    A hit names the boxed object and not the other. Without the box, captions of these scenes name
    both objects: 1% hits. With it, measured on these 96 boxes, the main job's model hits 76-77%
    (the earlier 5-epoch model 79%; over 240 boxes 77% and 78%). 96 boxes keep the draw of scenes
    from deciding the test (the standard error is 4%); the bar sits below the measured rate by
    about 2.5 of them."""
    folder, truth = scenes
    pairs = [s for s in make_split("test", 200, 32) if len(s.objects) == 2][:48]
    captioner = Captioner.from_pretrained(shapes_model)
    hits = 0
    for scene in pairs:
        picture = Image.fromarray(scene.image).resize((32 * SCALE, 32 * SCALE), Image.NEAREST)
        for target, other in (scene.objects, scene.objects[::-1]):
            caption = captioner.caption(picture, region=[int(v) for v in box_around(target).split(",")])
            names_target = f"{target.colour} {target.shape}" in caption
            names_other = f"{other.colour} {other.shape}" in caption
            hits += names_target and not names_other
    assert hits / (2 * len(pairs)) >= 0.65, hits
    i, scene = next((i, s) for i, s in enumerate(truth) if len(s.objects) == 2)  # generate.py's --region: the same
    image = Image.open(folder / f"{i:02d}.png")
    box = box_around(scene.objects[0])
    assert (generate.main([str(shapes_model), str(folder / f"{i:02d}.png"), "--region", box])[0]["captions"][0]
            == captioner.caption(image, region=[int(v) for v in box.split(",")]))


@pytest.mark.parametrize("region, message", [
    ("10,10,5,40", "empty box"),
    ("200,200,300,300", "lies outside 00.png (128x128)"),
    ("1,2,3", "expected four numbers"),
])
def test_bad_regions_are_refused(shapes_model, scenes, region, message, capsys):
    folder, _ = scenes
    with pytest.raises(SystemExit) as error:
        generate.main([str(shapes_model), str(folder / "00.png"), "--region", region])
    assert message in str(error.value.code)


def test_region_mask_image(shapes_model, scenes, tmp_path):
    folder, truth = scenes
    named, tried = 0, 0
    for i, scene in [(i, s) for i, s in enumerate(truth) if len(s.objects) == 2][:4]:
        mask = np.zeros((128, 128), dtype=np.uint8)
        x0, y0, x1, y1 = (v * SCALE for v in scene.objects[0].box)
        mask[y0 : y1 + 1, x0 : x1 + 1] = 255
        Image.fromarray(mask).save(tmp_path / "mask.png")
        caption = generate.main([str(shapes_model), str(folder / f"{i:02d}.png"), "--region-mask",
                                 str(tmp_path / "mask.png")])[0]["captions"][0]
        named, tried = named + (scene.objects[0].shape in caption), tried + 1
    assert tried >= 3 and named >= tried - 1, f"{named} of {tried} masked regions named"  # one miss allowed: see test_model_files
    Image.fromarray(np.zeros((128, 128), dtype=np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(SystemExit, match="no white pixel"):
        generate.main([str(shapes_model), str(folder / "00.png"), "--region-mask", str(tmp_path / "empty.png")])


def test_attention_pictures_are_written(shapes_model, scenes, tmp_path):
    folder, _ = scenes
    results = generate.main([str(shapes_model), str(folder / "00.png"), str(folder / "01.png"),
                             "--attention", str(tmp_path / "att")])
    for r in results:
        picture = Image.open(r["attention"])
        assert picture.format == "PNG" and picture.width > 400 and picture.height > 150
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == ["00.png", "01.png"]


def test_word_attention_maps_are_distributions_over_patches(shapes_model, scenes):
    captioner = Captioner.from_pretrained(shapes_model)
    folder, _ = scenes
    result = captioner.caption(folder / "00.png", attention=True)
    assert result.text == captioner.caption(folder / "00.png")  # the same greedy caption
    assert " ".join(result.words) == result.text
    grid = captioner.model.encoder.config.grid
    maps = result.word_maps()
    assert maps.shape == (len(result.words), grid, grid)
    assert_close(maps.sum((-2, -1)), torch.ones(len(result.words)))
    layers, heads = captioner.model.decoder.config.layers, captioner.model.decoder.config.heads
    assert result.cross_attention.shape == (layers, heads, len(result.words), grid, grid)
    assert_close(result.word_maps(layer=1), result.cross_attention[1].mean(0))
    assert_close(result.rollout.sum(), torch.tensor(1.0))


def test_attention_rollout_by_hand():
    attn = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None, None]  # (1, 1, 3, 3)
    # one layer: 0.5 * I + 0.5 * A, row 0 = [0.75, 0.125, 0.125] -> patches [0.5, 0.5]
    assert_close(attention_rollout([attn]), torch.tensor([[0.5, 0.5]]))
    skewed = torch.tensor([[0.2, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None, None]
    assert attention_rollout([skewed, skewed])[0, 0] == 1.0  # all flow goes through patch 1


def test_bad_checkpoints_get_one_line_errors(shapes_checkpoint, scenes, tmp_path):
    folder, _ = scenes
    image = str(folder / "00.png")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(shapes_checkpoint.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    state = torch.load(shapes_checkpoint, weights_only=True)
    state["model_config"]["decoder"]["width"] = 64
    other = tmp_path / "other-config.pt"
    torch.save(state, other)
    for path, message in [(truncated, "damaged or truncated, torch.load failed"), (foreign, "not a captioner checkpoint"),
                          (other, "weights do not fit the configuration"), (tmp_path / "none.pt", "no such model folder or checkpoint")]:
        with pytest.raises(SystemExit) as error:
            generate.main([str(path), image])
        assert message in str(error.value.code) and "\n" not in str(error.value.code)


def test_a_training_checkpoint_captions_like_its_model_folder(shapes_checkpoint, shapes_model, scenes):
    folder, _ = scenes
    images = [str(folder / f"{i:02d}.png") for i in range(6)]
    assert generate.main([str(shapes_checkpoint), *images]) == generate.main([str(shapes_model), *images])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_captions_as_float32_does(shapes_model, tmp_path, dtype):
    """--dtype bfloat16 / float16: the built-in model's captions (greedy, beam 3, sampled) equal float32's on
    40 scenes, through generate.py, with the attention pictures still drawn."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, scene in enumerate(make_split("test", 40, 32)):
        Image.fromarray(scene.image).save(folder / f"{i:02d}.png")
    greedy = None
    for options in ([], ["--beam", "3"], ["--temperature", "0.7", "--num", "2"]):
        full = generate.main([str(shapes_model), str(folder), *options])
        half = generate.main([str(shapes_model), str(folder), *options, "--dtype", dtype])
        assert [r["captions"] for r in half] == [r["captions"] for r in full], options
        greedy = greedy or full
    drawn = generate.main([str(shapes_model), str(folder / "00.png"), "--dtype", dtype, "--attention", str(tmp_path)])
    assert (tmp_path / "00.png").exists() and drawn[0]["captions"] == greedy[0]["captions"]


def test_compiled_decoding_captions_as_eager_from_a_cold_compile_cache(shapes_model, scenes, tmp_path):
    """generate.py --compile as a user runs it: a fresh process whose Inductor cache folder is empty (on a
    growing cache, torch.compile crashed there). The captions equal the eager ones."""
    folder, _ = scenes
    images = [str(folder / f"{i:02d}.png") for i in range(8)]  # one batch: one graph to compile
    out, env = tmp_path / "compiled.json", {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    subprocess.run([sys.executable, "generate.py", str(shapes_model), *images, "--compile", "--json", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    eager = generate.main([str(shapes_model), *images])
    assert [r["captions"] for r in json.loads(out.read_text())] == [r["captions"] for r in eager]


def test_compiled_steps_give_the_same_beams_and_samples(shapes_model, scenes):
    """Beam search reorders a fixed-length cache, sampling runs rows past their end token: captions equal
    the eager decoder's. The steps are traced by torch.compile and run as traced (its "eager" backend), so
    no C++ build is needed; the test above builds them with Inductor."""
    folder, _ = scenes
    images = [str(folder / f"{i:02d}.png") for i in range(10)]
    eager, compiled = Captioner.from_pretrained(shapes_model), Captioner.from_pretrained(shapes_model)
    compile_steps(compiled.model, backend="eager")
    for options in (dict(), dict(beam=3), dict(temperature=1.0, num=3, seed=1)):
        assert compiled.caption(images, batch_size=4, **options) == eager.caption(images, batch_size=4, **options)


def test_compile_without_a_cpp_compiler_is_one_line(shapes_model, scenes, tmp_path):
    """A CPU machine without a working C++ compiler (Inductor needs one): --compile stops with one line that
    says what to do, as the user sees it, instead of Inductor's traceback."""
    folder, _ = scenes
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "generate.py", str(shapes_model), str(folder / "00.png"), "--compile"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if "cpp_extension.py" not in line]  # torch's CUDA_HOME note
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: torch.compile could not build the decoding step") and "without --compile" in lines[0]
