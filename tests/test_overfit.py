"""A tiny captioner memorises a handful of (image feature, caption) pairs exactly, in seconds."""

import torch
import torch.nn.functional as F

from model.decoder import CaptionDecoder, DecoderConfig
from model.sampling import beam_search, sample

BOS, EOS, PAD, V = 1, 2, 0, 20


def test_tiny_decoder_overfits_a_few_pairs_to_zero_error():
    captions = [[5, 6, 7, 8], [5, 9, 7], [10, 11, 12, 13, 14], [15, 6, 16], [17, 18, 19, 5, 6, 7]]
    B, T = len(captions), max(map(len, captions)) + 1
    tokens = torch.full((B, T), PAD)  # BOS caption, right-padded
    targets = torch.full((B, T), -100)  # caption EOS, ignored past the end
    for b, c in enumerate(captions):
        tokens[b, : len(c) + 1] = torch.tensor([BOS] + c)
        targets[b, : len(c) + 1] = torch.tensor(c + [EOS])
    lengths = torch.tensor([len(c) + 1 for c in captions])
    clip_embed, patches = torch.randn(B, 16), torch.randn(B, 4, 16)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=V, max_len=10, width=32, layers=2, heads=4, prefix_len=2,
                                           clip_dim=16, patch_dim=16, dropout=0.0))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    for _ in range(300):
        logits = decoder(tokens, clip_embed, patches, lengths).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    assert loss.item() < 0.01
    expected = [c + [EOS] for c in captions]
    out = sample(decoder, clip_embed, patches, BOS, EOS)
    assert [row[: len(e)].tolist() for row, e in zip(out, expected)] == expected
    beams, _ = beam_search(decoder, clip_embed, patches, BOS, EOS, beam_size=3)
    assert [row[: len(e)].tolist() for row, e in zip(beams, expected)] == expected
