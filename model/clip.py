"""OpenCLIP's vision weights in our hand-written ViT, frozen, with OpenCLIP's own preprocessing."""

import torch
from torch import nn

from model.vit import ViTConfig, VisionTransformer


def vit_config_from_openclip(visual):
    """Read the architecture off an OpenCLIP `model.visual`, refusing features our ViT does not have."""
    name = type(visual).__name__
    if name != "VisionTransformer":
        raise ValueError(f"only OpenCLIP ViT towers are supported, this model's vision tower is a {name}")
    unsupported = {
        "attn_pool": getattr(visual, "attn_pool", None) is not None,
        "global average pooling": getattr(visual, "pool_type", "tok") != "tok",
        "final_ln_after_pool": getattr(visual, "final_ln_after_pool", False),
        "layer scale": not isinstance(visual.transformer.resblocks[0].ls_1, nn.Identity),
    }
    found = [feature for feature, present in unsupported.items() if present]
    if found:
        raise ValueError(f"this OpenCLIP ViT uses {', '.join(found)}, which our ViT does not implement")
    block = visual.transformer.resblocks[0]
    width = visual.conv1.out_channels
    return ViTConfig(
        image_size=visual.image_size[0],
        patch_size=visual.patch_size[0],
        width=width,
        layers=len(visual.transformer.resblocks),
        heads=block.attn.num_heads,
        mlp_ratio=block.mlp.c_fc.out_features / width,
        output_dim=visual.proj.shape[1],
        quick_gelu=type(block.mlp.gelu).__name__ == "QuickGELU",  # OpenCLIP's own class of that name
    )


def load_clip_vit(name="ViT-B-32", pretrained="openai", fused=True):
    """Build OpenCLIP model `name` with weights `pretrained` (a tag such as "openai", a local checkpoint
    path, or None for random weights), copy its vision tower into our ViT and freeze it.

    Returns (vit, preprocess): the frozen VisionTransformer in eval mode and OpenCLIP's eval transform.
    A tag downloads weights, so offline use needs a local file or None.
    """
    import open_clip  # imported here: the offline default never needs it

    clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    config = vit_config_from_openclip(clip.visual)
    config.fused = fused
    with torch.device("meta"):  # no random initialisation of weights about to be replaced (seconds for ViT-L-14)
        vit = VisionTransformer(config)
    vit.load_openclip_state_dict(clip.visual.state_dict(), assign=True)
    vit.requires_grad_(False).eval()
    vit.preprocess_cfg = dict(clip.visual.preprocess_cfg)  # size, mean, std, interpolation: to rebuild `preprocess`
    return vit, preprocess
