"""One optimisation step and the teacher-forced validation loss: what train.py and the benchmarks share.

A batch is (inputs, tokens, targets, lengths): inputs is what the model reads of the images
(images=... or features=...), tokens and targets are (B, T) with targets -100 past each caption's end,
lengths (B,) the real caption lengths (data/sources.py makes them). Shape letters as in model/__init__.py.
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


def autocast_dtype(device, amp=True):
    """The lower precision a training step runs its matrix products in on `device`, or None for float32.

    bfloat16 on a CUDA GPU that has it (Ampere and later); float16 on one that has not (a Colab T4,
    a V100), which needs a gradient scaler (see train_step). The CPU and Apple's MPS train in float32.
    """
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def train_step(model, optimizer, params, batch, lr, grad_clip=1.0, label_smoothing=0.0, autocast=None,
               accumulate=1, batch_tokens=None, processes=1, scaler=None):
    """One step of AdamW (or any optimizer) on one batch; returns the loss (a tensor, not yet synchronised).

    The loss is the mean cross-entropy over the batch's caption tokens. accumulate=N runs the batch as
    N micro-batches, one after another, adding their gradients: each micro-batch's summed loss is divided
    by the token count of the whole batch, so the step is the one a single big batch would take, with
    a Nth of the memory. autocast: the dtype of torch.autocast (autocast_dtype), or None for float32.

    scaler (a torch.amp.GradScaler, for float16): float16 cannot hold gradients below about 6e-8, so the
    loss is multiplied by a large power of two before backward and the gradients divided by it before
    clipping; a step whose gradients overflowed to inf or NaN is skipped and the scale lowered, so a
    NaN never reaches the weights. Powers of two scale exactly: in float32 the step is unchanged.

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
        with torch.autocast(tokens.device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(tokens, lengths=lengths, **inputs).logits  # (b, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                                   reduction="sum") / tokens_in_batch
        scaled = loss * processes
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total = total + loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # true gradients, so clipping sees their real size
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped if any gradient is inf or NaN
        scaler.update()
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
