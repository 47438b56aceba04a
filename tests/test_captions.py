"""Every caption format users have is read the same way, and a malformed file gets a one-line error."""

import csv
import json
import os

import pytest

from conftest import shared_file
from data.captions import CaptionFileError, check_images, read_captions

EXPECTED = {"1.jpg": ["A dog runs.", "A brown dog, running."], "2.jpg": ["Two people | talking."]}


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def karpathy():
    return json.dumps({"dataset": "flickr30k", "images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": c} for c in EXPECTED["1.jpg"]]},
        {"filename": "2.jpg", "split": "restval", "sentences": [{"raw": c} for c in EXPECTED["2.jpg"]]}]})


FORMATS = {
    "karpathy": ("dataset_flickr30k.json", karpathy()),
    "coco": ("captions_val2014.json", json.dumps({
        "images": [{"id": 7, "file_name": "1.jpg"}, {"id": 9, "file_name": "2.jpg"}],
        "annotations": [{"image_id": 7, "id": 1, "caption": "A dog runs."},
                        {"image_id": 9, "id": 2, "caption": "Two people | talking."},
                        {"image_id": 7, "id": 3, "caption": "A brown dog, running."}]})),
    "kaggle": ("results.csv", "image_name| comment_number| comment\n1.jpg| 0| A dog runs.\n"
               "1.jpg| 1| A brown dog, running.\n2.jpg| 0| Two people | talking.\n"),
    "token": ("results_20130124.token", "1.jpg#0\tA dog runs.\n1.jpg#1\tA brown dog, running.\n"
              "2.jpg#0\tTwo people | talking.\n"),
    "flickr8k": ("captions.txt", 'image,caption\n1.jpg,A dog runs.\n1.jpg,"A brown dog, running."\n'
                 "2.jpg,Two people | talking.\n"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_the_same_captions(tmp_path, fmt):
    name, content = FORMATS[fmt]
    captions = read_captions(write(tmp_path, name, content))
    assert captions.format == fmt
    assert captions.captions == EXPECTED
    assert set(captions.splits) == {"1.jpg", "2.jpg"}


def test_karpathy_splits_are_kept_and_restval_is_train(tmp_path):
    captions = read_captions(write(tmp_path, "d.json", karpathy()))
    assert captions.splits == {"1.jpg": "train", "2.jpg": "train"}


def test_files_without_splits_get_a_reproducible_split(tmp_path):
    lines = "".join(f"{i}.jpg#0\tcaption {i}\n" for i in range(200))
    path = write(tmp_path, "r.token", lines)
    a, b = read_captions(path), read_captions(path)
    assert a.splits == b.splits
    assert len(a.names("val")) == 10 and len(a.names("test")) == 10 and len(a.names("train")) == 180


@pytest.mark.parametrize("content, message", [
    ("image_name, comment_number, comment\n1.jpg, 0, A dog.\n", "line 1: a header with an unexpected separator"),
    ("image_name| comment_number| comment\n1.jpg| 0| A dog.\n2.jpg, 0, A cat.\n", "line 3: expected"),
    ("image_name| comment_number| comment\n1.jpg| 0| A dog.\n1.jpg| 1|   \n", "line 3: empty caption for 1.jpg"),
    ("1.jpg#0\tA dog.\n1.jpg A cat.\n", "line 2: expected 'name.jpg#k<TAB>caption'"),
    ('{"images": [{"filename": "1.jpg", "sentences": [{"raw": "A dog."}]}', "line 1: not valid JSON"),
    ('{"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 5, "caption": "x"}]}',
     "image_id 5, which is not in 'images'"),
    ("hello world\n", "line 1: not a caption format"),
    ("", "not a caption format"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "bad.txt", content)
    with pytest.raises(CaptionFileError) as error:
        read_captions(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


DEEP = "[" * 100_000 + "]" * 100_000  # 200 kB of JSON, nested deeper than Python's parser recurses
LONG = "a" * 140_000  # one field over the csv module's limit of 131,072 characters


@pytest.mark.parametrize("name, content, message", [
    ("captions.txt", f"image,caption\n1.jpg,A dog.\n2.jpg,{LONG}\n", "line 3: not valid CSV (field larger than"),
    ("metadata.csv", f"file_name,text\n1.jpg,A dog.\n2.jpg,{LONG}\n", "line 3: not valid CSV (field larger than"),
    ("dataset_flickr30k.json", '{"images": ' + DEEP + "}", "JSON nested too deeply to read"),
    ("metadata.jsonl", '{"file_name": "1.jpg", "text": "A dog."}\n{"file_name": ' + DEEP + "}\n",
     "line 2: JSON nested too deeply to read"),
], ids=["a long CSV field", "a long metadata.csv field", "deep JSON", "a deep metadata.jsonl line"])
def test_files_built_to_break_the_parsers_get_one_line(tmp_path, name, content, message):
    """The csv module refuses a field over 131,072 characters and json a nesting deeper than Python's recursion
    limit, each with an exception that named no file (issue 34, point 11)."""
    path = write(tmp_path, name, content)
    with pytest.raises(CaptionFileError) as error:
        read_captions(path)
    assert str(error.value).startswith(f"{path}") and message in str(error.value) and "\n" not in str(error.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    content = "image_name| comment_number| comment\n1.jpg| 0| A dog.\n2.jpg| 0| Caf\xe9 table.\n".encode("latin-1")
    with pytest.raises(CaptionFileError, match=r"line 3: bytes that are not UTF-8"):
        read_captions(write(tmp_path, "results.csv", content))


def test_missing_caption_file():
    with pytest.raises(CaptionFileError, match="no such caption file"):
        read_captions("/nonexistent/captions.json")


def test_images_missing_from_the_folder_are_counted_or_skipped(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "1.jpg").write_bytes(b"")
    lines = "".join(f"{i}.jpg#0\tcaption {i}\n" for i in range(1, 9))
    path = write(tmp_path, "r.token", lines)
    with pytest.raises(CaptionFileError, match=r"7 of 8 captioned images are missing \(first: 2.jpg, 3.jpg"):
        check_images(read_captions(path), folder)
    captions = read_captions(path)
    assert check_images(captions, folder, skip_missing=True) == 7
    assert list(captions.captions) == ["1.jpg"] and list(captions.splits) == ["1.jpg"]


def test_real_flickr30k_files_agree():
    kaggle = read_captions(shared_file("flickr30k-mini", "results.csv"))
    karpathy = read_captions(shared_file("flickr30k-mini", "dataset_flickr30k.json"))
    assert kaggle.captions.keys() == karpathy.captions.keys()
    name = next(iter(karpathy.captions))
    assert [c.strip() for c in kaggle.captions[name]] == [c.strip() for c in karpathy.captions[name]]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("with_split", [True, False])
def test_hugging_face_imagefolder_metadata(tmp_path, kind, with_split):
    """metadata.csv / metadata.jsonl as Hugging Face's imagefolder reads them, written by the csv and json
    modules as a user's script would: file names (in subfolders too), captions, and the split column if any."""
    rows = [{"file_name": f"{'a' if i < 6 else 'b/c'}/{i}.jpg", "text": f"a picture, number {i}",
             **({"split": ["train", "validation", "test"][i % 3]} if with_split else {})} for i in range(12)]
    rows.append({"file_name": "a/0.jpg", **{k: v for k, v in rows[0].items() if k == "split"},
                 "text": "a second caption"})
    path = tmp_path / f"metadata.{kind}"
    if kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    captions = read_captions(path)
    assert captions.format == "imagefolder" and len(captions.captions) == 12
    assert captions.captions["a/0.jpg"] == ["a picture, number 0", "a second caption"]
    assert captions.captions["b/c/11.jpg"] == ["a picture, number 11"]
    if with_split:
        assert captions.splits["a/1.jpg"] == "val" and captions.splits["a/2.jpg"] == "test"
        assert len(captions.names("train")) == 4
    else:
        assert set(captions.splits.values()) <= {"train", "val", "test"} and len(captions.splits) == 12


def test_imagefolder_rows_that_cannot_be_read_are_named(tmp_path):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"file_name": "0.jpg", "text": "a dog"}\n{"file_name": "1.jpg"}\n')
    with pytest.raises(CaptionFileError, match=r"metadata.jsonl, line 2: expected the fields file_name and text"):
        read_captions(path)
    path.write_text('{"file_name": "0.jpg", "text": "a dog", "split": "holdout"}\n')
    with pytest.raises(CaptionFileError, match=r"line 1: split 'holdout' is not train, val or test"):
        read_captions(path)


def test_coco_karpathy_filepath_is_part_of_the_name(tmp_path):
    """dataset_coco.json names images by filepath and filename: COCO users keep train2014/ and val2014/."""
    images = [{"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "test",
               "sentences": [{"raw": "A cat."}]},
              {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "split": "restval",
               "sentences": [{"raw": "A dog."}]}]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    captions = read_captions(path)
    assert captions.captions == {"val2014/COCO_val2014_000000000042.jpg": ["A cat."],
                                 "train2014/COCO_train2014_000000000009.jpg": ["A dog."]}
    assert captions.splits["train2014/COCO_train2014_000000000009.jpg"] == "train"


def test_images_in_subfolders_are_found_and_names_that_leave_the_folder_are_not(tmp_path):
    """COCO's layout: --images holds train2014/ and val2014/, and the Karpathy file's filepath names the
    subfolder (every such image was 'missing'). A name that would leave --images is missing, though the
    file it points at exists."""
    folder = tmp_path / "images"
    (folder / "train2014").mkdir(parents=True)
    (folder / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(b"")
    (folder / "flat.jpg").write_bytes(b"")
    (tmp_path / "secret.jpg").write_bytes(b"")  # beside the images folder, not in it
    os.mkfifo(folder / "train2014" / "pipe.jpg")  # a name in the folder that is no file
    images = [{"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg"},
              {"filename": "flat.jpg"},
              {"filepath": "..", "filename": "secret.jpg"},
              {"filepath": "train2014/../..", "filename": "secret.jpg"},
              {"filepath": str(tmp_path), "filename": "secret.jpg"},
              {"filepath": "train2014", "filename": "pipe.jpg"}]
    path = write(tmp_path, "dataset_coco.json", json.dumps({"images": [
        dict(image, split="train", sentences=[{"raw": "A dog."}]) for image in images]}))
    with pytest.raises(CaptionFileError, match=r"images: 4 of 6 captioned images are missing \(first: \.\./secret"):
        check_images(read_captions(path), folder)
    captions = read_captions(path)
    assert check_images(captions, folder, skip_missing=True) == 4
    assert sorted(captions.captions) == ["flat.jpg", "train2014/COCO_train2014_000000000009.jpg"]
