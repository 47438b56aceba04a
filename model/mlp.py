"""The position-wise feed-forward network shared by encoder and decoder blocks."""

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Linear -> GELU -> Linear, named c_fc / c_proj as in OpenCLIP and GPT-2. (..., C) -> (..., C).

    gelu: "exact" (erf), "tanh" (the tanh approximation GPT-2 was trained with, Hugging Face's gelu_new),
    "quick" (QuickGELU) or "relu".
    """

    def __init__(self, width, hidden, quick_gelu=False, gelu="exact"):
        super().__init__()
        gelu = "quick" if quick_gelu else gelu
        activations = {"exact": nn.GELU, "tanh": lambda: nn.GELU(approximate="tanh"), "quick": QuickGELU,
                       "relu": nn.ReLU}  # relu: not a GELU at all, but what ClipCap's transformer mapper uses
        if gelu not in activations:
            raise ValueError(f"gelu must be one of {', '.join(activations)}, not {gelu!r}")
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = activations[gelu]()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))
