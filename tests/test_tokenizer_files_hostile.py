"""GPT-2 tokenizer files (vocab.json, merges.txt) built to hang, exhaust or crash the reader, as a model folder
from the hub or a --gpt2 folder may hold them. Each is refused in one line naming the file, before it is read:
the reads that could hang or allocate run in a child process with a time limit, whose peak memory is measured."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data.gpt2_bpe import MAX_FILE_BYTES, GPT2Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SAFE_PEAK_GB = 1.0  # the child imports torch (about 0.4 GB); a 16 MB merges.txt took 1.2 GB more, /dev/zero 4 GB in 10 s


def tokenizer_folder(tmp_path):
    """The smallest GPT-2 tokenizer: the end token, two letters and their merge."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    return folder


def load_in_child(path, call="GPT2Tokenizer.from_folder(path)", timeout=60):
    """Run `call` on `path` in a fresh process, its heap capped at 3 GB: (its last line of output, peak GB)."""
    code = textwrap.dedent(f"""
        import resource, sys
        from captioner import Captioner
        from data.gpt2_bpe import GPT2Tokenizer
        path = sys.argv[1]
        resource.setrlimit(resource.RLIMIT_DATA, (3 * 2**30, resource.RLIM_INFINITY))
        try:
            {call}
            print("loaded")
        except ValueError as e:
            print("refused:", e)
        # this process's own peak: ru_maxrss would also count the parent's memory at the fork (a pytest worker's)
        print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1e6)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                             timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} on {path} still ran after {timeout} s")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stderr[-2000:]
    return lines[0], float(lines[1])


def test_the_smallest_tokenizer_loads(tmp_path):
    tokenizer = GPT2Tokenizer.from_folder(tokenizer_folder(tmp_path))
    assert tokenizer.encode_text("ab") == [3] and tokenizer.vocab_size == 4


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_a_tokenizer_file_that_never_ends_or_waits_forever_is_not_read(tmp_path, name):
    """/dev/zero grew to 4 GB in 10 s; a named pipe waited for a writer forever."""
    folder = tokenizer_folder(tmp_path)
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")
    line, peak = load_in_child(folder)
    assert line == f"refused: {folder / name}: a device, not a regular file" and peak < SAFE_PEAK_GB, (line, peak)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    line, peak = load_in_child(folder)
    assert line == f"refused: {folder / name}: a named pipe, not a regular file", line


def test_a_huge_merges_file_is_refused_before_it_is_read(tmp_path):
    """Just over the cap, in the costliest form: millions of distinct two-character merges (a 16 MB file took
    1.2 GB and 5 s to read, 250 MB more than 4 GB)."""
    folder = tokenizer_folder(tmp_path)
    letters = [chr(c) for c in range(0x4E00, 0x4E00 + 1500)]  # 3 bytes each in UTF-8: 8 bytes a merge
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for first in letters:
            f.write("".join(f"{first} {second}\n" for second in letters))
    assert os.path.getsize(folder / "merges.txt") > MAX_FILE_BYTES
    line, peak = load_in_child(folder)
    assert line.startswith(f"refused: {folder / 'merges.txt'}: 18,000,014 bytes is more than a tokenizer's merges "
                           "holds (16,777,216 at most)"), line
    assert peak < SAFE_PEAK_GB, peak


@pytest.mark.parametrize("name, content, message", [
    ("vocab.json", b"[" * 100_000 + b"]" * 100_000, "vocab.json: not valid JSON (nested deeper than"),
    ("vocab.json", b'{"<|endoftext|>": 0, "\xff": 1}', "vocab.json, line 1: bytes that are not UTF-8 (b'\\xff\": ')"),
    ("merges.txt", b"#version: 0.2\na b\n\xe9 b\n", "merges.txt, line 3: bytes that are not UTF-8 (b'\\xe9 b\\n')"),
    ("vocab.json", b'{"<|endoftext|>": 0, "a": "1", "b": 2, "ab": 3}', "vocab.json: its ids are not the numbers 0 to 3"),
    ("vocab.json", b'{"<|endoftext|>": 0, "a": 1, "b": 1, "ab": 3}', "vocab.json: its ids are not the numbers 0 to 3"),
    ("vocab.json", b'{"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 10000000}', "its ids are not the numbers 0 to 3"),
], ids=["nested 100,000 deep", "not UTF-8", "merges not UTF-8", "an id that is a string", "an id twice",
        "an id past the vocabulary"])
def test_a_malformed_tokenizer_file_gets_one_line_naming_it(tmp_path, name, content, message):
    """The deep one was a RecursionError traceback; the undecodable ones named no file."""
    folder = tokenizer_folder(tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError) as error:
        GPT2Tokenizer.from_folder(folder)
    text = str(error.value)
    assert text.startswith(str(folder / name)) and message in text and "\n" not in text, text


def test_a_model_folder_whose_vocabulary_is_dev_zero_is_refused_by_from_pretrained(tmp_path):
    """What generate.py and serve.py load: a ViT-GPT2 folder from the hub, its vocab.json linked to /dev/zero."""
    pytest.importorskip("transformers")
    from test_hugging_face import vit_gpt2_folder

    folder, _ = vit_gpt2_folder(tmp_path)
    (folder / "vocab.json").unlink()
    (folder / "vocab.json").symlink_to("/dev/zero")
    line, peak = load_in_child(folder, "Captioner.from_pretrained(path)")
    assert line == f"refused: {folder / 'vocab.json'}: a device, not a regular file" and peak < SAFE_PEAK_GB, line
