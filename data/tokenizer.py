"""Two tokenizers with one interface: a word vocabulary built from the training captions, and OpenCLIP's BPE.

Both give ids with start and end tokens around the caption, decode up to the end token, and turn into a
plain dict for the checkpoint (`to_dict` / `tokenizer_from_dict`).
"""

import re
from collections import Counter

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words_of(text):
    """Lower-cased words, punctuation dropped: "A dog's ball." -> ["a", "dog's", "ball"]."""
    return WORD.findall(text.lower())


class WordTokenizer:
    """One id per word seen at least min_count times in the training captions; others become <unk>."""

    kind = "word"
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]

    def __init__(self, words):
        self.itos = self.specials + [w for w in words if w not in self.specials]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions, min_count=5):
        counts = Counter(w for c in captions for w in words_of(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, text):
        return [self.bos_id] + [self.stoi.get(w, self.unk_id) for w in words_of(text)] + [self.eos_id]

    def decode(self, ids):
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(self.specials):
                words.append(self.itos[i])
            elif i == self.unk_id:
                words.append("<unk>")
        return " ".join(words)

    def to_dict(self):
        return {"kind": self.kind, "words": self.itos[len(self.specials):]}


class BPETokenizer:
    """OpenCLIP's byte-pair encoding (49,408 ids), shipped inside open_clip: nothing to download."""

    kind = "bpe"

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer

        self.bpe = SimpleTokenizer()
        self.bos_id = self.bpe.encoder["<start_of_text>"]
        self.eos_id = self.bpe.encoder["<end_of_text>"]
        self.pad_id = 0
        self.vocab_size = len(self.bpe.encoder)

    def encode(self, text):
        return [self.bos_id] + self.bpe.encode(text) + [self.eos_id]

    def decode(self, ids):
        kept = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.bos_id:
                kept.append(int(i))
        return self.bpe.decode(kept).strip()

    def to_dict(self):
        return {"kind": self.kind}


def build_tokenizer(kind, captions, min_count=1):
    """"bpe": OpenCLIP's; "word": a vocabulary of the words in `captions` seen at least min_count times."""
    if kind == "bpe":
        return BPETokenizer()
    if kind == "word":
        return WordTokenizer.build(captions, min_count)
    raise ValueError(f"tokenizer must be 'word' or 'bpe', not {kind!r}")


def tokenizer_from_dict(d, where="tokenizer"):
    """The tokenizer a checkpoint or config.json describes; one sentence naming `where` if it is malformed."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "word" and set(d) == {"kind", "words"} and isinstance(d["words"], list) \
            and all(isinstance(w, str) for w in d["words"]):
        return WordTokenizer(d["words"])
    if kind == "bpe" and set(d) == {"kind"}:
        return BPETokenizer()
    if kind == "gpt2" and set(d) - {"end"} == {"kind", "vocab", "merges"} and isinstance(d["vocab"], dict) \
            and isinstance(d["merges"], list) and all(isinstance(m, list) and len(m) == 2 for m in d["merges"]) \
            and d.get("end", "<|endoftext|>") in d["vocab"]:
        from data.gpt2_bpe import GPT2Tokenizer

        return GPT2Tokenizer(d["vocab"], d["merges"], d.get("end", "<|endoftext|>"))
    raise ValueError(f"{where}: expected {{\"kind\": \"word\", \"words\": [...]}}, {{\"kind\": \"bpe\"}} or "
                     f"{{\"kind\": \"gpt2\", \"vocab\": {{...}}, \"merges\": [...]}}, "
                     f"found {str(d)[:80]}")
