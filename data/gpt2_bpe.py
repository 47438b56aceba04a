"""GPT-2's byte-level byte-pair encoding, read from a model folder's vocab.json and merges.txt.

Hand-written (as minGPT's bpe.py) because it is short and a student can follow it: text is split into
words by one regular expression, each word's UTF-8 bytes are written as printable characters (so every
string, emoji included, has an encoding and nothing is ever unknown), and the word's pieces are merged
pair by pair in the order merges.txt ranks them. The pattern needs Unicode letter and number classes,
which Python's `re` lacks; `regex` (already required by open_clip's tokenizer) has them.
"""

from functools import lru_cache
from pathlib import Path

import regex

from model.files import read_json, read_text

WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"
MAX_FILE_BYTES = 16 * 2**20  # vocab.json or merges.txt: GPT-2's are 1 MB and 0.5 MB; a 16 MB merges.txt takes 1.2 GB


@lru_cache
def byte_characters():
    """The 256 bytes -> 256 printable characters: printable bytes stand for themselves, the others (space,
    control bytes) are moved to characters from 256 up, so a space shows as 'Ġ'."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


class GPT2Tokenizer:
    """GPT-2's tokenizer with this project's interface: encode adds the start and end tokens (both
    <|endoftext|>, as GPT-2 captioners use it), decode stops at the end token. end=".": captions end at
    the first full stop instead (ClipCap's captions were trained without an end token)."""

    kind = "gpt2"

    def __init__(self, vocab, merges, end=END_OF_TEXT):
        self.stoi = dict(vocab)  # piece -> id
        self.itos = {i: piece for piece, i in self.stoi.items()}
        self.merges = [tuple(m) for m in merges]
        self.rank = {pair: i for i, pair in enumerate(self.merges)}  # lower merges first
        self.to_char = byte_characters()
        self.to_byte = {c: b for b, c in self.to_char.items()}
        self.bos_id = self.pad_id = self.stoi[END_OF_TEXT]
        self.end = end
        self.eos_id = self.stoi[end]
        self.cache = {}

    @classmethod
    def from_folder(cls, folder, end=END_OF_TEXT):
        """vocab.json and merges.txt of a Hugging Face GPT-2 folder; ValueError naming the file if one is
        missing, malformed, or not a regular file of sane size (model/files.py)."""
        folder = Path(folder)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        for path in (vocab_path, merges_path):
            if not path.exists():
                raise ValueError(f"{path} does not exist: the GPT-2 tokenizer needs vocab.json and merges.txt")
        vocab = read_json(vocab_path, max_bytes=MAX_FILE_BYTES, what="a tokenizer's vocabulary")
        lines = [line for line in read_text(merges_path, MAX_FILE_BYTES, "a tokenizer's merges").splitlines()
                 if line and not line.startswith("#version")]
        merges = [line.split(" ") for line in lines]
        bad = next((n for n, m in enumerate(merges, 1) if len(m) != 2), None)
        if bad is not None:
            raise ValueError(f"{merges_path}: merge {bad} is not two pieces separated by one space: {lines[bad - 1]!r}")
        if not isinstance(vocab, dict) or END_OF_TEXT not in vocab:
            raise ValueError(f"{vocab_path}: not a GPT-2 vocabulary (no {END_OF_TEXT} token)")
        ids = {i for i in vocab.values() if type(i) is int}  # bool is an int, but not an id
        if len(ids) != len(vocab) or ids != set(range(len(vocab))):
            raise ValueError(f"{vocab_path}: its ids are not the numbers 0 to {len(vocab) - 1}, each once")
        if end not in vocab:
            raise ValueError(f"{vocab_path}: has no {end!r} token to end captions with")
        return cls(vocab, merges, end)

    @property
    def vocab_size(self):
        return len(self.stoi)

    def bpe(self, word):
        """One word's printable characters -> its pieces, merging the best-ranked adjacent pair until none
        of its pairs is in merges.txt."""
        if word in self.cache:
            return self.cache[word]
        pieces = list(word)
        while len(pieces) > 1:
            pairs = [(self.rank.get(pair, float("inf")), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
            rank, _ = min(pairs)
            if rank == float("inf"):
                break
            first, second = self.merges[rank]
            merged, i = [], 0
            while i < len(pieces):  # merge every occurrence of this pair, left to right
                if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            pieces = merged
        self.cache[word] = pieces
        return pieces

    def encode_text(self, text):
        """Text -> ids, without start or end tokens."""
        ids = []
        for word in WORDS.findall(text):
            chars = "".join(self.to_char[b] for b in word.encode("utf-8"))
            ids += [self.stoi[piece] for piece in self.bpe(chars)]
        return ids

    def encode(self, text):
        return [self.bos_id] + self.encode_text(text) + [self.eos_id]

    def decode(self, ids):
        """Ids -> text, up to the first end token; bytes that do not form UTF-8 become '�'."""
        pieces = []
        for i in ids:
            if i == self.eos_id:
                break
            pieces.append(self.itos[i])
        data = bytes(self.to_byte[c] for c in "".join(pieces))
        return data.decode("utf-8", errors="replace")

    def to_dict(self):
        d = {"kind": self.kind, "vocab": self.stoi, "merges": [list(m) for m in self.merges]}
        return d if self.end == END_OF_TEXT else d | {"end": self.end}
