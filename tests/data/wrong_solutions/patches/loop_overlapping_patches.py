# mistake: The loop cuts patch (i, j) at pixel (i, j) instead of (i * p, j * p), so the patches overlap and only the top-left corner of the image is used.
"""Exercise 4: patch embedding, without a convolution (Dosovitskiy et al. 2020, section 3.1).

A ViT cuts the image into p x p squares and maps each, flattened, to a C-wide token with one matrix.
The project does this with a Conv2d whose kernel and stride are both p; here you do it by hand with
reshapes and one matrix product, and the checker compares with the convolution.

Check yourself:  python -m exercises check patches
The project's own answer is PatchEmbedding in model/vit.py (the convolution).
"""

import torch


def patch_embedding(images, weight, patch_size):
    """images: (B, 3, S, S) with S a multiple of p = patch_size; weight: (C, 3, p, p), a Conv2d's weight.
    Returns (B, N, C), N = (S / p)^2 patches numbered row by row: patch i * grid + j is row i, column j.

    Hints:
    1. images.view(B, 3, g, p, g, p) names the grid rows, the pixel rows, the grid columns and the pixel
       columns (g = S // p).
    2. permute so each patch's own pixels come last in the order (3, p, p), as in the weight:
       (B, g, g, 3, p, p), then reshape to (B, g * g, 3 * p * p).
    3. Multiply by weight.flatten(1).T, which is (3 * p * p, C).
    """
    B = images.size(0)
    p = patch_size
    g = images.size(-1) // p
    W = weight.flatten(1).T
    tokens = []
    for i in range(g):
        for j in range(g):
            patch = images[:, :, i:i + p, j:j + p]
            tokens.append(patch.reshape(B, -1) @ W)
    return torch.stack(tokens, dim=1)
