"""evaluate.py: scores of generate.py's JSON or CSV, or of a model folder captioning the images itself."""

import json

import pytest
from PIL import Image

import evaluate
import generate
from data.shapes import make_split


@pytest.fixture(scope="module")
def scored_folder(tmp_path_factory):
    """Ten test scenes as PNGs and a Karpathy-format reference file; two of them in the 'val' split."""
    folder = tmp_path_factory.mktemp("eval")
    images = []
    for i, scene in enumerate(make_split("test", 10, 32)):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
        images.append({"filename": f"{i}.png", "split": "val" if i < 2 else "test",
                       "sentences": [{"raw": c} for c in scene.captions]})
    (folder / "refs.json").write_text(json.dumps({"images": images}))
    return folder


def test_scores_from_captions_files_and_from_a_model_agree(shapes_model, scored_folder, tmp_path):
    images = [str(scored_folder / f"{i}.png") for i in range(10)]
    generate.main([str(shapes_model), *images, "--json", str(tmp_path / "c.json"), "--csv", str(tmp_path / "c.csv")])
    refs = str(scored_folder / "refs.json")
    from_json = evaluate.main([str(tmp_path / "c.json"), refs, "--split", "test", "--json", str(tmp_path / "s.json")])
    from_csv = evaluate.main([str(tmp_path / "c.csv"), refs, "--split", "test", "--no-java"])
    from_model = evaluate.main(["--model", str(shapes_model), "--images", str(scored_folder), refs, "--split", "test",
                                "--no-java"])
    assert from_csv == from_model == {k: v for k, v in from_json.items() if k in from_csv}  # Java's METEOR: once
    assert json.loads((tmp_path / "s.json").read_text()) == from_json
    assert from_json["BLEU-4"] > 0.5  # the shared model captions the built-in scenes nearly perfectly


def test_compile_scores_as_eager(shapes_model, scored_folder, monkeypatch):
    """evaluate.py --model --compile: the decoder's steps go through model/compiled.py and the scores are the
    eager ones. Traced by torch.compile and run as traced (its "eager" backend), so no C++ build here;
    tests/test_generate.py runs --compile with Inductor from a cold cache."""
    import torch

    compiled, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real_compile(fn, backend="eager",
                                                                                            dynamic=False))
    argv = ["--model", str(shapes_model), "--images", str(scored_folder), str(scored_folder / "refs.json"), "--no-java"]
    assert evaluate.main(argv + ["--compile"]) == evaluate.main(argv) and len(compiled) == 1


@pytest.mark.parametrize("argv, message", [
    (["missing.json", "refs.json"], "no such captions file"),
    (["--model", "m", "refs.json"], "--model needs --images"),
    (["only-one.json"], "give CAPTIONS REFERENCES"),
])
def test_bad_arguments_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        evaluate.main(argv)
    text = str(error.value.code) + capsys.readouterr().err
    assert message in text


@pytest.mark.parametrize("name, content, message", [
    ("captions.csv", "image,caption_index,caption\n0.png,0," + "a" * 140_000 + "\n", "line 2: not valid CSV (field larger"),
    ("captions.json", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    ("captions.json", '[{"image": "0.png", "captions": ["caf\xe9"]}]'.encode("latin-1"), "line 1: bytes that are not UTF-8"),
    ("captions.csv", "image,caption\n0.png,a red square\n", "line 2: not a row of the CSV generate.py writes"),
], ids=["a CSV field over csv's limit", "JSON 100,000 deep", "not UTF-8", "a CSV without caption_index"])
def test_captions_files_built_to_break_the_parsers_get_one_line(tmp_path, name, content, message):
    """Each ended in a traceback that named no file: _csv.Error, RecursionError, UnicodeDecodeError (issue 34,
    point 11), KeyError."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "refs.json").write_text(json.dumps({"images": [{"filename": "0.png", "sentences": [{"raw": "a"}]}]}))
    with pytest.raises(SystemExit) as error:
        evaluate.main([str(path), str(tmp_path / "refs.json"), "--no-java"])
    assert str(error.value.code).startswith(f"error: {path}") and message in str(error.value.code)
    assert "\n" not in str(error.value.code)


@pytest.fixture
def coco_references(tmp_path):
    """A COCO captions file of two images, ids 1 and 42 (no image files: scoring reads only the captions)."""
    images = [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}, {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}]
    annotations = [{"id": 1, "image_id": 1, "caption": "a red square"}, {"id": 2, "image_id": 42, "caption": "a blue circle"}]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


@pytest.mark.parametrize("results, message", [
    ([{"image_id": 42, "caption": "a blue circle"}, {"image_id": 999, "caption": "a cat"}],
     "1 captioned images have no references in {refs} (first: image_id 999)"),
    ([{"image_id": 998, "caption": "a dog"}, {"image_id": 999, "caption": "a cat"}],
     "2 captioned images have no references in {refs} (first: image_id 998, image_id 999)"),
    ([{"image": "\x1b]0;owned\x07.jpg", "captions": ["a cat"]}],
     "1 captioned images have no references in {refs} (first: \\x1b]0;owned\\x07.jpg)"),
    ([{"image_id": 42, "caption": None}], "{results}: [0].caption is null, not a string"),
    ([{"image_id": 1, "caption": "a red square"}, {"image_id": 42, "caption": 12345}],
     "{results}: [1].caption is 12345, not a string"),
    ([{"image_id": 42, "caption": ["a", "list"]}], '{results}: [0].caption is ["a", "list"], not a string'),
    ([{"image_id": True, "caption": "a red square"}], "{results}: [0].image_id is true, not a whole number"),
    ([{"image_id": 4.2, "caption": "a red square"}], "{results}: [0].image_id is 4.2, not a whole number"),
    ([{"image": "COCO_val2014_000000000042.jpg", "captions": [None]}], "{results}: [0].captions[0] is null, not a string"),
    ({"image_id": 42, "caption": "a blue circle"}, "{results}: neither the JSON generate.py writes"),
], ids=["an unknown image_id", "only unknown image_ids", "an unknown name of escapes", "a null caption", "a number as caption",
        "a list as caption", "image_id true", "image_id 4.2", "generate.py's JSON with a null caption", "not a list"])
def test_coco_results_of_the_wrong_shape_get_one_line_naming_the_field(coco_references, tmp_path, results, message):
    """Each was scored or ended in a TypeError traceback (issue 34, point 12): an unknown image_id made sorting
    compare str and int, and building the message join ints; null, 12345 or a list were scored as the text
    "None", "12345", "['a', 'list']"; image_id true was image 1."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(SystemExit) as error:
        evaluate.main([str(path), str(coco_references), "--no-java"])
    line = str(error.value.code)
    assert line.startswith("error: ") and message.format(refs=coco_references, results=path) in line, line
    assert "\n" not in line


def test_coco_results_written_by_generate_and_by_another_tool_score_the_same(shapes_model, tmp_path):
    """generate.py --coco-results writes [{"image_id", "caption"}]; evaluate.py reads it against a COCO
    captions file (images named COCO_val2014_<id>.jpg, as COCO's are), and a results file another tool wrote
    (ids in another order, a second caption for one image, as pycocoevalcap's users have them) scores the same."""
    folder = tmp_path / "val2014"
    folder.mkdir()
    images, annotations = [], []
    for i, scene in enumerate(make_split("test", 6, 32)):
        name = f"COCO_val2014_{1000 + 7 * i:012d}.jpg"
        Image.fromarray(scene.image).resize((64, 64), Image.NEAREST).save(folder / name, quality=95)
        images.append({"id": 1000 + 7 * i, "file_name": name})
        annotations += [{"id": len(annotations), "image_id": 1000 + 7 * i, "caption": c} for c in scene.captions]
    refs = tmp_path / "captions_val2014.json"
    refs.write_text(json.dumps({"images": images, "annotations": annotations}))
    generate.main([str(shapes_model), str(folder), "--coco-results", str(tmp_path / "results.json"),
                   "--json", str(tmp_path / "ours.json")])
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [1000 + 7 * i for i in range(6)]
    theirs = [{"image_id": r["image_id"], "caption": r["caption"]} for r in reversed(results)]
    theirs.append({"image_id": results[0]["image_id"], "caption": "a second caption, not scored"})
    (tmp_path / "theirs.json").write_text(json.dumps(theirs))
    ours = evaluate.main([str(tmp_path / "ours.json"), str(refs), "--no-java"])
    assert evaluate.main([str(tmp_path / "results.json"), str(refs), "--no-java"]) == ours
    assert evaluate.main([str(tmp_path / "theirs.json"), str(refs), "--no-java"]) == ours


def test_clipscore_through_evaluate(shapes_model, scored_folder, tmp_path):
    images = [str(scored_folder / f"{i}.png") for i in range(10)]
    generate.main([str(shapes_model), *images, "--json", str(tmp_path / "c.json")])
    scores = evaluate.main([str(tmp_path / "c.json"), str(scored_folder / "refs.json"), "--images", str(scored_folder),
                            "--clipscore", "ViT-S-32:none", "--no-java"])
    assert 0 <= scores["CLIPScore"] <= 2.5 and "RefCLIPScore" in scores and "BLEU-4" in scores
