"""Vision Transformer (Dosovitskiy et al. 2020), laid out so OpenCLIP's vision weights load into it."""

from dataclasses import dataclass

import torch
from torch import nn

from model.attention import MultiHeadAttention
from model.hooks import plugged
from model.mlp import MLP
from model.sizes import check_sizes


@dataclass
class ViTConfig:
    image_size: int = 224  # input images are image_size x image_size RGB
    patch_size: int = 32  # each patch_size x patch_size square becomes one token
    width: int = 768  # C, token width
    layers: int = 12  # number of residual attention blocks
    heads: int = 12  # H, attention heads per block
    mlp_ratio: float = 4.0  # hidden width of the MLP is mlp_ratio * C
    output_dim: int = 512  # E, width of the pooled, projected embedding (CLIP's joint space)
    quick_gelu: bool = False  # True for OpenAI's original CLIP weights
    fused: bool = True  # use F.scaled_dot_product_attention unless weights are asked for
    sincos_init: bool = False  # start positions as 2-D sin-cos waves (helps training from scratch)
    patch_bias: bool = False  # a bias in the patch projection (Hugging Face's ViT has one, OpenCLIP's not)
    ln_pre: bool = True  # a LayerNorm before the blocks (OpenCLIP's); Hugging Face's ViT has none
    norm_eps: float = 1e-5  # every LayerNorm's epsilon (Hugging Face's ViT: 1e-12)
    class_token_in_memory: bool = False  # the decoder cross-attends to the class token too (VisionEncoderDecoder)

    ADDED_LATER = {"patch_bias", "ln_pre", "norm_eps", "class_token_in_memory"}  # see DecoderConfig
    LIMITS = dict(image_size=(1, 4096), patch_size=(1, 4096), width=(1, 8192), layers=(1, 128), heads=(1, 128),
                  mlp_ratio=(1e-3, 16), output_dim=(1, 8192), norm_eps=(1e-30, 1.0))  # see model/sizes.py

    def __post_init__(self):
        check_sizes(self, self.LIMITS, lambda: [
            (self.width % self.heads, f"width {self.width} is not divisible by heads {self.heads}"),
            (self.image_size % self.patch_size, f"image_size {self.image_size} is not a multiple of patch_size "
                                                f"{self.patch_size}"),
            (self.grid > 128, f"{self.grid} x {self.grid} patches is more than the 128 x 128 a ViT here may have"),
        ])

    @property
    def grid(self):
        return self.image_size // self.patch_size

    @property
    def num_patches(self):
        return self.grid**2


@dataclass
class VisionOutput:
    """What the ViT returns, by name."""

    pooled: torch.Tensor  # (B, E) class token after ln_post, projected: CLIP's image embedding
    patches: torch.Tensor  # (B, N - 1, C) patch tokens after ln_post, not projected
    attn: list = None  # with return_attn: one (B, H, N, N) tensor per layer
    tokens: torch.Tensor = None  # (B, N, C) every token after ln_post, the class token first


def sincos_2d(grid, width):
    """Fixed 2-D positions (as in MAE): half the channels encode the row, half the column. -> (grid*grid, width)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter) / quarter)  # (width/4,)
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles_y = y.flatten()[:, None] * omega[None, :]  # (grid*grid, width/4)
    angles_x = x.flatten()[:, None] * omega[None, :]
    out = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)  # (grid*grid, 4*quarter)
    return torch.nn.functional.pad(out, (0, width - out.size(1)))  # (grid*grid, width)


class PatchEmbedding(nn.Module):
    """Cut the image into patches and project each linearly: a convolution with stride = kernel = patch."""

    def __init__(self, patch_size, width, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, images):
        """images: (B, 3, image_size, image_size) -> (B, grid * grid, C)."""
        theirs = plugged("patch_embedding")  # a student's, without a convolution (model/hooks.py)
        if theirs is not None:
            bias = 0 if self.proj.bias is None else self.proj.bias  # (C,), added per channel
            return theirs(images, self.proj.weight, self.proj.kernel_size[0]) + bias  # (B, grid * grid, C)
        x = self.proj(images)  # (B, C, grid, grid)
        return x.flatten(2).transpose(1, 2)  # (B, grid * grid, C), patches in row-major order


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each inside a residual."""

    def __init__(self, width, heads, mlp_ratio=4.0, quick_gelu=False, fused=True, eps=1e-5, gelu="exact"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, fused=fused)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), quick_gelu, gelu)

    def forward(self, x, return_attn=False):
        """x: (B, N, C) -> (x (B, N, C), weights (B, H, N, N) or None)."""
        a, weights = self.attn(self.ln_1(x), return_attn=return_attn)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class VisionTransformer(nn.Module):
    """Image -> (pooled CLIP embedding, patch tokens). Parameter names match OpenCLIP's `visual` after
    two renames (see `load_openclip_state_dict`)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        assert c.image_size % c.patch_size == 0, "image_size must be a multiple of patch_size"
        scale = c.width**-0.5
        self.patch_embed = PatchEmbedding(c.patch_size, c.width, c.patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(c.num_patches + 1, c.width))
        if c.sincos_init:
            with torch.no_grad():
                self.positional_embedding[1:] = sincos_2d(c.grid, c.width)
        self.ln_pre = nn.LayerNorm(c.width, eps=c.norm_eps) if c.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(
            EncoderBlock(c.width, c.heads, c.mlp_ratio, c.quick_gelu, c.fused, c.norm_eps) for _ in range(c.layers)
        )
        self.ln_post = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(c.width, c.output_dim))

    def forward(self, images, return_attn=False):
        """images: (B, 3, image_size, image_size), normalised -> VisionOutput."""
        x = self.patch_embed(images)  # (B, N - 1, C)
        cls = self.class_embedding.expand(x.size(0), 1, -1).to(x.dtype)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, C)
        x = self.ln_pre(x)
        attn = []
        for block in self.blocks:
            x, weights = block(x, return_attn)  # (B, N, C)
            attn.append(weights)
        x = self.ln_post(x)
        pooled = x[:, 0] @ self.proj  # (B, E)
        return VisionOutput(pooled, x[:, 1:], attn if return_attn else None, x)

    def load_openclip_state_dict(self, state_dict, assign=False):
        """Load the state_dict of an OpenCLIP `model.visual`: only two prefixes differ from ours.
        assign=True takes the tensors themselves (for a ViT built on the "meta" device, never initialised)."""
        renamed = {}
        for name, tensor in state_dict.items():
            name = name.replace("conv1.", "patch_embed.proj.", 1) if name.startswith("conv1.") else name
            name = name.replace("transformer.resblocks.", "blocks.", 1)
            renamed[name] = tensor
        self.load_state_dict(renamed, assign=assign)
