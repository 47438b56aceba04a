# mistake: The (C, 3, p, p) weight is reshaped to (3 * p * p, C) instead of flattened and transposed, which scrambles its entries.
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
    x = images.view(B, 3, g, p, g, p)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * p * p)
    W = weight.reshape(3 * p * p, -1)  # (3 * p * p, C)
    return x @ W
