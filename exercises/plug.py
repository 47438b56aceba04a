"""Put a student's functions in place of the project's, so the real captioner trains and captions with them.

Each exercise that has a place in model/ names the attributes it replaces. `plug_in` swaps them and
returns a function that puts the originals back; `use_student_code` does both around a `with` block.
The attention exercise also replaces the fused kernel that MultiHeadAttention calls when no weights are
asked for (F.scaled_dot_product_attention), so every attention step of the model runs the student's code.
"""

import types
from contextlib import contextmanager

import torch.nn.functional as F

from importlib import import_module

from model.attention import MultiHeadAttention
from model.decoder import DecoderBlock
from model.vit import PatchEmbedding

# The modules themselves (`model.attention` as an attribute is the function model/__init__.py exports).
attention_module, decoder_module, sampling_module = (import_module(f"model.{name}") for name in
                                                     ("attention", "decoder", "sampling"))

# exercise -> [(where, attribute, the student's function, how it is installed)]
# "function": a module-level function, replaced as is; "method": the student's function takes the module
# (self) as its first argument, as a method does; "heads": split_heads(x, heads) called with self.heads.
PLUGS = {
    "attention": [(attention_module, "attention", "attention", "function"),
                  (attention_module, "F", "attention", "fused")],
    "masks": [(m, name, name, "function") for m in (attention_module, decoder_module)
              for name in ("causal_mask", "padding_mask")],
    "heads": [(MultiHeadAttention, "split_heads", "split_heads", "heads"),
              (MultiHeadAttention, "merge_heads", "merge_heads", "merge")],
    "patches": [(PatchEmbedding, "forward", "patch_embedding", "patches")],
    "block": [(DecoderBlock, "forward", "decoder_block", "method")],
    "prefix": [(decoder_module, "prefix_lm_mask", "prefix_lm_mask", "function")],
    "filters": [(sampling_module, name, name, "function") for name in ("top_k_filter", "top_p_filter")],
    "beam": [(sampling_module, "best_beams", "best_beams", "function")],
}


def installed(function, how):
    """The student's function in the form the attribute it replaces has."""
    if how == "heads":
        return lambda self, x: function(x, self.heads)
    if how == "merge":
        return lambda self, x: function(x)
    if how == "fused":  # model.attention's F, with its fused attention kernel doing the student's attention
        fused = lambda q, k, v, attn_mask=None: function(q, k, v, attn_mask)[0]  # noqa: E731
        return types.SimpleNamespace(**{**vars(F), "scaled_dot_product_attention": fused})
    if how == "patches":  # the exercise has no bias; a ViT with one (Hugging Face's) adds it per channel
        bias = lambda self: 0 if self.proj.bias is None else self.proj.bias  # noqa: E731
        return lambda self, images: function(images, self.proj.weight, self.proj.kernel_size[0]) + bias(self)
    return function


def plug_in(functions):
    """functions: exercise name -> (function name -> the student's callable), for exercises in PLUGS.
    -> a function that puts the project's own code back."""
    unknown = sorted(set(functions) - set(PLUGS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} cannot be plugged into the model; these can: {', '.join(PLUGS)}")
    undo = []
    for exercise, theirs in functions.items():
        for where, attribute, name, how in PLUGS[exercise]:
            undo.append((where, attribute, getattr(where, attribute)))
            setattr(where, attribute, installed(theirs[name], how))

    def unplug():
        for where, attribute, original in reversed(undo):
            setattr(where, attribute, original)

    return unplug


@contextmanager
def use_student_code(functions):
    """with use_student_code({"attention": {"attention": my_attention}}): ... trains or captions with it."""
    unplug = plug_in(functions)
    try:
        yield
    finally:
        unplug()
