"""Writes the notebooks from the cell lists below, without outputs. Edit here, then run:

    python notebooks/make_notebooks.py

Keeping the source as plain Python makes the notebooks reviewable in a diff.
"""

from pathlib import Path

import nbformat

SETUP = """import os, sys
sys.path.insert(0, os.path.abspath(".."))  # the notebooks import the project's own code from model/ and data/
import torch
import matplotlib.pyplot as plt
torch.manual_seed(0)"""

NOTEBOOKS = {
    "01_patches.ipynb": [
        ("md", """# 1. From pixels to patch tokens

A Vision Transformer never looks at single pixels. It cuts the image into square patches, flattens
each patch into a vector and projects it linearly to the model's width. This notebook does that by
hand, then with the project's `PatchEmbedding`, and checks that both agree."""),
        ("code", SETUP),
        ("md", "A scene from the built-in dataset, 64 x 64 pixels, cut into 8 x 8 patches: an 8 x 8 grid of 64 patches."),
        ("code", """from data.shapes import make_split
from data.images import normalize

scene = make_split("test", 1, image_size=64)[0]
print(scene.captions[0])
image = normalize(torch.from_numpy(scene.image).permute(2, 0, 1)[None])  # (1, 3, 64, 64)
plt.imshow(scene.image); plt.title("the image"); plt.axis("off"); plt.show()"""),
        ("code", """p = 8
patches = image.unfold(2, p, p).unfold(3, p, p)        # (1, 3, 8, 8, p, p): channels, grid rows, grid cols, pixels
print(patches.shape)
fig, axes = plt.subplots(8, 8, figsize=(4, 4))
for r in range(8):
    for c in range(8):
        tile = scene.image[r * p:(r + 1) * p, c * p:(c + 1) * p]
        axes[r, c].imshow(tile); axes[r, c].axis("off")
plt.suptitle("the same image as 64 patches"); plt.show()"""),
        ("md", """Flatten each patch (3 x 8 x 8 = 192 numbers) in row-major order and multiply by a weight
matrix W of shape (192, C). That is the whole patch embedding."""),
        ("code", """from model.vit import PatchEmbedding

C = 32
embed = PatchEmbedding(patch_size=p, width=C)
flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 64, 3 * p * p)  # (1, N, 192), patches in row-major order
W = embed.proj.weight.reshape(C, -1).T                                # (192, C): the convolution's kernel, flattened
by_hand = flat @ W                                                     # (1, N, C)
with_module = embed(image)                                             # a convolution with stride = kernel = 8
torch.testing.assert_close(by_hand, with_module)
print("by hand == PatchEmbedding:", by_hand.shape)"""),
        ("md", """## Positions

Attention has no notion of order, so each patch token gets a position vector added. Our ViT starts
these as 2-D sine waves when it is trained from scratch (OpenCLIP's weights overwrite them). Each small
picture below shows how similar one patch's position vector is to every other patch's: nearby patches
have similar positions."""),
        ("code", """from model.vit import sincos_2d

pos = sincos_2d(grid=8, width=64)                       # (64, 64): one vector per patch
pos = pos / pos.norm(dim=-1, keepdim=True)
similarity = pos @ pos.T                                # (64, 64): cosine similarity of every pair
fig, axes = plt.subplots(8, 8, figsize=(5, 5))
for i in range(64):
    axes[i // 8, i % 8].imshow(similarity[i].reshape(8, 8), cmap="viridis"); axes[i // 8, i % 8].axis("off")
plt.suptitle("position similarity, one panel per patch"); plt.show()"""),
    ],
    "02_attention.ipynb": [
        ("md", """# 2. Attention, one step at a time

Scaled dot-product attention: every query compares itself with every key, the scores are scaled by
the square root of the head width, masked, turned into probabilities by a softmax, and used to average
the values. We do one head by hand, draw the masks, then check the project's `MultiHeadAttention`
against PyTorch's own."""),
        ("code", SETUP + "\nimport math\nfrom model.attention import attention, causal_mask, padding_mask, MultiHeadAttention"),
        ("code", """T, D = 5, 4
q, k, v = torch.randn(T, D), torch.randn(T, D), torch.randn(T, D)
scores = q @ k.T                      # (T, T): how well each query matches each key
scaled = scores / math.sqrt(D)        # keeps the softmax from saturating as D grows
mask = causal_mask(T)                 # (T, T) booleans: True = may attend
masked = scaled.masked_fill(~mask, float("-inf"))
weights = masked.softmax(dim=-1)      # each row sums to 1 over the allowed keys
out = weights @ v                     # (T, D)
print(weights.round(decimals=2))
ours, ours_weights = attention(q[None, None], k[None, None], v[None, None], mask)
torch.testing.assert_close(ours[0, 0], out)
torch.testing.assert_close(ours_weights[0, 0], weights)
print("by hand == model.attention.attention")"""),
        ("md", "## The masks\n\nCausal: a caption token may look at itself and earlier tokens only. Padding: nobody looks at padding. They combine with `&`."),
        ("code", """lengths = torch.tensor([5, 3])
combined = causal_mask(5) & padding_mask(lengths, 5)   # (2, 1, 5, 5)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, m, title in zip(axes, [causal_mask(5), combined[0, 0], combined[1, 0]],
                        ["causal", "causal & padding (length 5)", "causal & padding (length 3)"]):
    ax.imshow(m, cmap="gray"); ax.set_title(title); ax.set_xlabel("key"); ax.set_ylabel("query")
plt.tight_layout(); plt.show()"""),
        ("md", """## Many heads, and a check against PyTorch

`MultiHeadAttention` projects the input to queries, keys and values, splits them into H heads of
width D = C / H, runs attention in each head and projects the concatenation back. Its parameters have
the names of `torch.nn.MultiheadAttention`, so weights copy across unchanged."""),
        ("code", """C, H = 16, 4
ours = MultiHeadAttention(C, H, fused=False)
reference = torch.nn.MultiheadAttention(C, H, batch_first=True)
reference.load_state_dict(ours.state_dict())
x = torch.randn(2, 5, C)
mask = causal_mask(5) & padding_mask(lengths, 5)
out, weights = ours(x, mask=mask, return_attn=True)           # weights: (B, H, T, T), one map per head
expected, _ = reference(x, x, x, attn_mask=~mask.expand(2, H, 5, 5).reshape(2 * H, 5, 5))  # torch: True = blocked
torch.testing.assert_close(out, expected)
print("ours == torch.nn.MultiheadAttention")
fig, axes = plt.subplots(1, H, figsize=(10, 2.5))
for h in range(H):
    axes[h].imshow(weights[1, h].detach(), cmap="magma"); axes[h].set_title(f"head {h}")
plt.suptitle("attention weights of the second sequence (length 3): masked keys get exactly 0"); plt.show()"""),
        ("md", "The fused path (`F.scaled_dot_product_attention`) gives the same output, faster; asking for the weights uses the explicit path above."),
        ("code", """fused = MultiHeadAttention(C, H, fused=True)
fused.load_state_dict(ours.state_dict())
torch.testing.assert_close(fused(x, mask=mask)[0], out)
print("fused == explicit")"""),
    ],
}


def main():
    folder = Path(__file__).parent
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                    for kind, src in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
        print("wrote", folder / name)


if __name__ == "__main__":
    main()
