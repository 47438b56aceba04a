"""One optimisation step and the teacher-forced validation loss: what train.py and the benchmarks share.

A batch is (inputs, tokens, targets, lengths): inputs is what the model reads of the images
(images=... or features=...), tokens and targets are (B, T) with targets -100 past each caption's end,
lengths (B,) the real caption lengths (data/sources.py makes them).
"""

import torch
import torch.nn.functional as F


def train_step(model, optimizer, params, batch, lr, grad_clip=1.0, label_smoothing=0.0, amp=True):
    """One step of AdamW (or any optimizer) on one batch; returns the loss (a tensor, not yet synchronised).

    amp: bfloat16 autocast, on CUDA only.
    """
    inputs, tokens, targets, lengths = batch
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=amp and tokens.device.type == "cuda"):
        logits = model(tokens, lengths=lengths, **inputs).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss


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
