"""Attention rollout (Abnar & Zuidema 2020): how much each patch flows into the class token through all layers."""

import torch


def attention_rollout(attn, residual=0.5):
    """attn: one (B, H, N, N) tensor per encoder layer -> (B, N - 1) class-token map over the patches, sums to 1.

    Each layer's head-averaged attention is mixed with the identity (the residual connection), rows
    renormalised, and the layers multiplied in order; row 0 (the class token) is read off.
    """
    B, _, N, _ = attn[0].shape
    eye = torch.eye(N, device=attn[0].device, dtype=attn[0].dtype)
    rollout = eye.expand(B, N, N)
    for weights in attn:
        a = residual * eye + (1 - residual) * weights.mean(dim=1)  # (B, N, N)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout  # (B, N, N): flow from the input tokens to this layer's outputs
    cls_to_patches = rollout[:, 0, 1:]  # (B, N - 1)
    return cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
