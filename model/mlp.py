"""The position-wise feed-forward network shared by encoder and decoder blocks."""

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Linear -> GELU -> Linear, named c_fc / c_proj as in OpenCLIP. (..., C) -> (..., C)."""

    def __init__(self, width, hidden, quick_gelu=False):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))
