"""Attention pictures: the model's view of an image, the encoder's rollout, then one heat map per word."""


def attention_figure(result, layer=None, columns=6):
    """A matplotlib Figure of a Caption (captioner.caption(..., attention=True)).

    layer: the decoder layer whose cross-attention is drawn, or None for the mean over layers.
    Drawn with matplotlib.figure.Figure, not pyplot, so a notebook's plotting backend is left alone.
    """
    from matplotlib.figure import Figure

    view, grid = result.view, result.rollout.size(0)
    maps = result.word_maps(layer)
    panels = [("image", None), ("encoder rollout", result.rollout)]
    panels += [(word, maps[i]) for i, word in enumerate(result.words)] if maps is not None else []
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, heat) in zip(axes.flat, panels):
        ax.imshow(view)
        if heat is not None:
            ax.imshow(heat.view(grid, grid).numpy(), cmap="inferno", alpha=0.6, interpolation="bilinear",
                      extent=(0, view.shape[1], view.shape[0], 0))
        ax.set_title(title, fontsize=11)
    fig.suptitle(result.text, fontsize=12)
    fig.tight_layout()
    return fig


def save_attention_picture(result, path, layer=None):
    """Write attention_figure(result) as a PNG; returns the path."""
    attention_figure(result, layer).savefig(path, dpi=90)
    return path
