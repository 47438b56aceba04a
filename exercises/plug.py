"""Put a student's functions in place of the project's, so the real captioner trains and captions with them.

The model owns the places where this may happen: its hook points (model/hooks.py). Each exercise with a
place in the model names the hooks its functions fill; a hook calls the student's function exactly as the
handed-out stub declares it. With `attention` plugged in, MultiHeadAttention skips the fused kernel, so
every attention step of the ViT and the decoder runs the student's code.
"""

from contextlib import contextmanager

from model.hooks import plug

# exercise -> the hooks its functions fill (each hook has the name of the stub's function)
PLUGS = {
    "attention": ["attention"],
    "masks": ["causal_mask", "padding_mask"],
    "heads": ["split_heads", "merge_heads"],
    "patches": ["patch_embedding"],
    "block": ["decoder_block"],
    "prefix": ["prefix_lm_mask"],
    "filters": ["top_k_filter", "top_p_filter"],
    "beam": ["best_beams"],
}


def hooks_for(functions):
    """functions: exercise name -> (function name -> the student's callable) -> hook -> callable."""
    unknown = sorted(set(functions) - set(PLUGS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} cannot be plugged into the model; these can: {', '.join(PLUGS)}")
    return {hook: theirs[hook] for exercise, theirs in functions.items() for hook in PLUGS[exercise]}


@contextmanager
def use_student_code(functions):
    """with use_student_code({"attention": {"attention": my_attention}}): ... trains or captions with it."""
    with plug(hooks_for(functions)):
        yield


def plug_in(functions):
    """Plug the student's functions in until the returned function is called (for code that cannot use a
    `with` block)."""
    context = use_student_code(functions)
    context.__enter__()
    return lambda: context.__exit__(None, None, None)
