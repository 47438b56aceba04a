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


def epoch_batches(pairs, batch_size, seed, epoch, group_by_length=False):
    """The batches of one epoch, (steps, batch_size) indices into `pairs`; the last partial batch is dropped.

    Each epoch has its own seeded order, so a resumed run sees exactly the batches an uninterrupted one
    would. With group_by_length, captions are sorted by length within pools of 50 batches and the batches
    are then shuffled: each batch holds captions of similar length, so little of it is padding (on
    Flickr30k, random batches are 57% padding; bench/flickr_epoch.py measures what that costs).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    B = batch_size
    order = torch.randperm(len(pairs), generator=generator)[: len(pairs) // B * B]
    if not group_by_length:
        return order.view(-1, B)
    lengths = torch.tensor([len(pairs[i][1]) for i in order.tolist()])
    pool = 50 * B
    order = torch.cat([order[i : i + pool][lengths[i : i + pool].argsort(stable=True)]
                       for i in range(0, len(order), pool)])
    batches = order.view(-1, B)  # (steps, B), similar lengths in each row
    return batches[torch.randperm(len(batches), generator=generator)]
