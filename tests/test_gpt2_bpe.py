"""GPT-2's byte-level BPE, hand-written, against transformers' GPT2Tokenizer on a vocabulary the test trains."""

import json

import pytest

from data.gpt2_bpe import GPT2Tokenizer
from data.tokenizer import tokenizer_from_dict

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ODD_TEXTS = [
    "A dog runs across the grass.",
    "naïve café, Zürich and 東京 😀🐕",
    "  two  spaces, a\ttab and a newline\n at the end  ",
    "it's they'll we've I'm you'd",
    "1234 ²³ ½ 3.14 -7",
    "UPPER lower MiXeD",
    "",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """vocab.json and merges.txt of a byte-level BPE trained on a few captions (GPT-2's own format)."""
    folder = tmp_path_factory.mktemp("gpt2-tokenizer")
    bpe = tokenizers.ByteLevelBPETokenizer()
    corpus = ["a dog runs across the grass", "two dogs play in the snow", "a man rides a bike on the street",
              "children are playing in a park", "the café in Zürich"] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    return folder


def test_our_tokenizer_equals_gpt2tokenizer_and_round_trips(folder):
    ours = GPT2Tokenizer.from_folder(folder)
    theirs = transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert len(ours.merges) > 50  # a real set of merges, not just the bytes
    for text in ODD_TEXTS:
        ids = ours.encode_text(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == text  # byte-level: every string comes back exactly
    caption = ours.encode("a dog runs")
    assert caption[0] == caption[-1] == ours.eos_id and ours.decode(caption[1:]) == "a dog runs"


def test_the_tokenizer_travels_in_a_model_folder_as_plain_json(folder):
    ours = GPT2Tokenizer.from_folder(folder)
    again = tokenizer_from_dict(json.loads(json.dumps(ours.to_dict())))
    assert again.encode("a café 😀") == ours.encode("a café 😀")


def test_missing_or_malformed_tokenizer_files_get_one_line(folder, tmp_path):
    with pytest.raises(ValueError, match=r"vocab.json does not exist: the GPT-2 tokenizer needs vocab.json and merges.txt"):
        GPT2Tokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text((folder / "vocab.json").read_text())
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ d\nthis line is wrong\n")
    with pytest.raises(ValueError, match=r"merges.txt: merge 2 is not two pieces separated by one space"):
        GPT2Tokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"vocab.json, line 1: not valid JSON"):
        GPT2Tokenizer.from_folder(tmp_path)
