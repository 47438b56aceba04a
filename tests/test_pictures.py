"""Attention pictures are honest: one flat block per patch with the grid drawn, one colour scale for every
panel with a colour bar that marks the uniform level 1/N, and smoothing only when asked for, labelled."""

from types import SimpleNamespace
from pathlib import Path

import numpy as np
import torch
from matplotlib.text import Text

from captioner.pictures import attention_figure

GRID = 4


def a_caption():
    maps = torch.rand(3, GRID * GRID, generator=torch.Generator().manual_seed(0)) ** 4
    maps = maps / maps.sum(-1, keepdim=True)  # each word's attention sums to 1 over the 16 patches
    maps[2] = 1 / GRID**2  # a word that looks everywhere alike: exactly uniform
    return SimpleNamespace(view=np.full((64, 64, 3), 200, dtype=np.uint8), rollout=torch.rand(GRID, GRID) * 3,
                           words=["a", "red", "square"], text="a red square",
                           word_maps=lambda layer=None: maps.view(3, GRID, GRID)), maps


def heat_images(fig):
    return [im for ax in fig.axes for im in ax.get_images() if im.get_array().shape == (GRID, GRID)]


def test_every_patch_is_a_block_on_one_shared_scale_with_the_uniform_level_marked():
    caption, maps = a_caption()
    fig = attention_figure(caption)
    heats = heat_images(fig)
    assert len(heats) == 4  # the rollout and three words
    assert {im.get_interpolation() for im in heats} == {"nearest"}
    top = max(float(maps.max()), float((caption.rollout / caption.rollout.sum()).max()))
    assert {(im.norm.vmin, im.norm.vmax) for im in heats} == {(0, top)}  # one scale, not each map its own
    bar = next(ax for ax in fig.axes if "share of the word's attention" in ax.get_ylabel())
    assert any(np.allclose(line.get_ydata(), 1 / GRID**2) for line in bar.get_lines())  # the uniform level
    word_axes = [ax for ax in fig.axes if ax.get_title() in caption.words]
    assert all(len(ax.get_lines()) == 2 * (GRID - 1) for ax in word_axes)  # the patch grid's lines
    uniform = next(im for im in heats if np.allclose(im.get_array(), 1 / GRID**2))
    assert uniform.norm(1 / GRID**2) < 0.5  # a uniform word is dim on the shared scale, not at the peak


def test_smoothing_only_when_asked_and_labelled(tmp_path):
    caption, _ = a_caption()
    fig = attention_figure(caption, smooth=True)
    assert {im.get_interpolation() for im in heat_images(fig)} == {"bilinear"}
    assert all("(smoothed)" in ax.get_title() for ax in fig.axes if ax.get_title() in ("red", "square"))
    fig.savefig(tmp_path / "smoothed.png")


def test_words_are_drawn_as_plain_text_never_as_mathtext(tmp_path):
    """A word between two $ is matplotlib mathtext: "$\\frac{$" raised ParseSyntaxException when drawn, "$x^{2}$"
    drew a formula. A model's words are drawn as the text they are (issue 34, point 10)."""
    caption, _ = a_caption()
    caption.words = ["$\\frac{$", "$x^{2}$", "\\$"]
    caption.text = " ".join(caption.words)
    fig = attention_figure(caption)
    drawn = [t for t in fig.findobj(Text) if t.get_text() in caption.words + [caption.text]]
    assert sorted(t.get_text() for t in drawn) == sorted(caption.words + [caption.text])
    assert not any(t.get_parse_math() or t.get_usetex() for t in drawn)
    fig.savefig(tmp_path / "words.png")


def test_the_page_draws_blocks_with_a_shared_scale():
    """The page's canvas never smooths a map past the grid, and it shows one colour bar with 1/N marked."""
    static = Path(__file__).resolve().parent.parent / "server" / "static"
    js, html = (static / "app.js").read_text(), (static / "index.html").read_text()
    assert "imageSmoothingEnabled = true" not in js and js.count("imageSmoothingEnabled = false") >= 2
    assert "drawGrid(" in js and "scalePeak()" in js and 'id="scale-uniform"' in html
