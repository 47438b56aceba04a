"""One optimisation step and the teacher-forced validation loss: what train.py and the benchmarks share.

A batch is (inputs, tokens, targets, lengths): inputs is what the model reads of the images
(images=... or features=...), tokens and targets are (B, T) with targets -100 past each caption's end,
lengths (B,) the real caption lengths (data/sources.py makes them).
"""

import torch
import torch.nn.functional as F


def micro_batches(batch, n):
    """Split a batch into n parts along its rows (the last may be smaller); inputs' tensors are split alike."""
    inputs, tokens, targets, lengths = batch
    size = -(-tokens.size(0) // n)  # rows per part, rounded up

    def rows(x, i):
        return tuple(t[i : i + size] for t in x) if isinstance(x, (tuple, list)) else x[i : i + size]

    return [({k: rows(v, i) for k, v in inputs.items()}, tokens[i : i + size], targets[i : i + size],
             lengths[i : i + size]) for i in range(0, tokens.size(0), size)]


def train_step(model, optimizer, params, batch, lr, grad_clip=1.0, label_smoothing=0.0, amp=True, accumulate=1,
               batch_tokens=None, processes=1):
    """One step of AdamW (or any optimizer) on one batch; returns the loss (a tensor, not yet synchronised).

    The loss is the mean cross-entropy over the batch's caption tokens. accumulate=N runs the batch as
    N micro-batches, one after another, adding their gradients: each micro-batch's summed loss is divided
    by the token count of the whole batch, so the step is the one a single big batch would take, with
    a Nth of the memory. amp: bfloat16 autocast, on CUDA only.

    Several processes (DistributedDataParallel): `batch` is this process's share of a global batch
    of `batch_tokens` predicted tokens. DDP averages the processes' gradients, so the loss that is
    differentiated is multiplied by `processes`: the average then equals the gradient of the global
    batch's mean. The loss returned is this share's part of that mean (the shares' losses add up to it).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    tokens_in_batch = (batch[2] != -100).sum() if batch_tokens is None else batch_tokens
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for inputs, tokens, targets, lengths in micro_batches(batch, accumulate):
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=amp and tokens.device.type == "cuda"):
            logits = model(tokens, lengths=lengths, **inputs).logits  # (b, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                                   reduction="sum") / tokens_in_batch
        (loss * processes).backward()
        total = total + loss.detach()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return total


@torch.no_grad()
def evaluate_loss(model, batches):
    """Teacher-forced cross-entropy per token and next-token accuracy over an iterable of batches."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, tokens, targets, lengths in batches:
        logits = model(tokens, lengths=lengths, **inputs).logits.float()  # (B, T, V)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        real = targets != -100
        correct += (logits.argmax(-1)[real] == targets[real]).sum().item()
        count += real.sum().item()
    model.train(was_training)
    return loss_sum / count, correct / count
