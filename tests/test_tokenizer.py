"""Both tokenizers round-trip captions and survive the trip through a checkpoint dict."""

from data.tokenizer import BPETokenizer, WordTokenizer, tokenizer_from_dict, words_of


def test_word_tokenizer_round_trip_min_count_and_unknown_words():
    captions = ["A dog runs.", "a dog sits", "A cat runs!", "a dog's ball"]
    tok = WordTokenizer.build(captions, min_count=2)
    assert tok.itos[4:] == ["a", "dog", "runs"]
    ids = tok.encode("A dog runs fast.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids[1:]) == "a dog runs <unk>"
    assert tok.decode(ids[1:3] + [tok.eos_id] + ids[3:]) == "a dog"  # stops at the end token
    again = tokenizer_from_dict(tok.to_dict())
    assert again.itos == tok.itos and again.encode("a dog") == tok.encode("a dog")
    assert words_of("A dog's ball, 2 cats.") == ["a", "dog's", "ball", "2", "cats"]


def test_bpe_tokenizer_round_trip():
    tok = BPETokenizer()
    assert tok.vocab_size == 49408
    ids = tok.encode("A dog runs on the beach.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids[1:]) == "a dog runs on the beach ."
    assert tokenizer_from_dict(tok.to_dict()).encode("a dog") == tok.encode("a dog")
