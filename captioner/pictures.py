"""Attention pictures: the model's view of an image, the encoder's rollout, then one heat map per word.

Drawn honestly: each patch is one flat block with a thin grid line around it (the model saw 16 patches
of a 4 x 4 grid, not a smooth field), every panel of a figure shares one colour scale with a colour bar,
and the bar marks the uniform level 1/N, where a patch gets exactly its share. A smoothed overlay exists
only when asked for (smooth=True), and its title says so. A model's words are drawn as plain text: never read
as mathtext (a word "$\\frac{$" would not parse) or TeX.
"""

def shares(heat):
    """A map as shares of the whole (it sums to 1 over the patches)."""
    return heat / heat.sum().clamp(min=1e-12)

PLAIN = dict(parse_math=False, usetex=False)  # text drawn as written: no $...$ mathtext, no TeX

def attention_figure(result, layer=None, columns=6, smooth=False):
    """A matplotlib Figure of a Caption (captioner.caption(..., attention=True)).

    layer: the decoder layer whose cross-attention is drawn, or None for the mean over layers.
    smooth: draw bilinear-smoothed maps (labelled so) instead of one block per patch.
    Drawn with matplotlib.figure.Figure, not pyplot, so a notebook's plotting backend is left alone.
    """
    from matplotlib.figure import Figure

    view, grid = result.view, result.rollout.size(0)
    maps = result.word_maps(layer)
    panels = [("image", None), ("encoder rollout (shares)", shares(result.rollout))]
    panels += [(word, maps[i]) for i, word in enumerate(result.words)] if maps is not None else []
    top = max(float(heat.max()) for _, heat in panels if heat is not None)  # one scale for every panel
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.2 * cols + 0.8, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    height, width = view.shape[:2]
    shown = None
    for ax, (title, heat) in zip(axes.flat, panels):
        ax.imshow(view)
        if heat is not None:
            shown = ax.imshow(heat.view(grid, grid).float().numpy(), cmap="inferno", alpha=0.65, vmin=0, vmax=top,
                              interpolation="bilinear" if smooth else "nearest", extent=(0, width, height, 0))
            if not smooth:
                for i in range(1, grid):  # the patch grid
                    ax.axhline(i * height / grid, color="white", lw=0.4, alpha=0.5)
                    ax.axvline(i * width / grid, color="white", lw=0.4, alpha=0.5)
        ax.set_title(title + (" (smoothed)" if smooth and heat is not None else ""), fontsize=11, **PLAIN)
    if shown is not None:
        # the uniform level named in the bar's label, not beside the bar, where it would cover a tick's number
        bar = fig.colorbar(shown, ax=axes, shrink=0.8,
                           label=f"share of the word's attention per patch\n(cyan line: uniform, 1/{grid * grid})")
        bar.ax.axhline(1 / grid**2, color="cyan", lw=2)
    fig.suptitle(result.text, fontsize=12, **PLAIN)
    return fig

def save_attention_picture(result, path, layer=None, smooth=False):
    """Write attention_figure(result) as a PNG; returns the path."""
    attention_figure(result, layer, smooth=smooth).savefig(path, dpi=90)
    return path

