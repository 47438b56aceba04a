"""(image, caption) pairs as token ids, and right-padded batches for teacher forcing."""

import torch


def make_pairs(rows, captions, tokenizer, max_len):
    """One pair per caption: (image row, token ids), captions cut to max_len tokens (end token kept).

    rows: the image-source row of each image; captions: a list of captions per image.
    """
    pairs = []
    for row, texts in zip(rows, captions):
        for text in texts:
            ids = tokenizer.encode(text)
            if len(ids) > max_len:
                ids = ids[: max_len - 1] + [tokenizer.eos_id]
            pairs.append((int(row), ids))
    return pairs


def make_batch(sequences, pad_id, ignore_index=-100):
    """Token id lists -> inputs (B, T) = seq[:-1], targets (B, T) = seq[1:], lengths (B,).

    Positions past a caption's end hold pad_id in the inputs and ignore_index in the targets.
    """
    lengths = torch.tensor([len(s) - 1 for s in sequences])
    T = int(lengths.max())
    inputs = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), T), ignore_index, dtype=torch.long)
    for b, s in enumerate(sequences):
        inputs[b, : len(s) - 1] = torch.tensor(s[:-1])
        targets[b, : len(s) - 1] = torch.tensor(s[1:])
    return inputs, targets, lengths
