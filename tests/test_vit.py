"""Our ViT equals OpenCLIP's vision tower on the same weights."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model.clip import load_clip_vit, vit_config_from_openclip
from model.vit import PatchEmbedding, ViTConfig, VisionTransformer

open_clip = pytest.importorskip("open_clip")
TOL = dict(rtol=1e-4, atol=1e-4)  # 12 to 24 layers of float32 round-off


def test_patch_embedding_convolution_equals_unfold_and_linear():
    p, C = 4, 10
    embed = PatchEmbedding(p, C)
    images = torch.randn(2, 3, 16, 12)
    patches = F.unfold(images, kernel_size=p, stride=p)  # (B, 3*p*p, grid_h*grid_w), row-major patches
    by_hand = patches.transpose(1, 2) @ embed.proj.weight.view(C, -1).T  # (B, N, C)
    assert_close(embed(images), by_hand)


def openclip_outputs(clip, images):
    """OpenCLIP's encode_image, and its vision tower's patch tokens."""
    pooled = clip.encode_image(images)
    clip.visual.output_tokens = True
    _, tokens = clip.visual(images)
    clip.visual.output_tokens = False
    return pooled, tokens


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16-quickgelu", "ViT-L-14"])
def test_our_vit_equals_openclip(name):
    clip = open_clip.create_model(name, pretrained=None).eval()
    config = vit_config_from_openclip(clip.visual)
    assert config.quick_gelu == name.endswith("quickgelu")
    with torch.device("meta"):  # built without initialising: every weight comes from OpenCLIP's
        ours = VisionTransformer(config).eval()
    ours.load_openclip_state_dict(clip.visual.state_dict(), assign=True)
    images = torch.randn(1 if "L-14" in name else 2, 3, 224, 224)
    with torch.no_grad():
        expected_pooled, expected_tokens = openclip_outputs(clip, images)
        out = ours(images)
    assert_close(out.pooled, expected_pooled, **TOL)
    assert_close(out.patches, expected_tokens, **TOL)
    assert out.patches.shape[1] == config.num_patches


def test_explicit_path_equals_fused_and_returns_one_map_per_layer():
    config = ViTConfig(image_size=32, patch_size=8, width=32, layers=3, heads=4, output_dim=16)
    ours = VisionTransformer(config).eval()
    images = torch.randn(2, 3, 32, 32)
    fused = ours(images)
    explicit = ours(images, return_attn=True)
    assert_close(fused.pooled, explicit.pooled)
    assert len(explicit.attn) == 3 and explicit.attn[0].shape == (2, 4, 17, 17)


def test_load_clip_vit_from_a_local_checkpoint_file(tmp_path):
    """The same call a user makes with pretrained="openai", given a checkpoint file instead."""
    clip = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    path = tmp_path / "vit-s-32.pt"
    torch.save(clip.state_dict(), path)
    vit, preprocess = load_clip_vit("ViT-S-32", pretrained=str(path))
    assert not vit.training
    assert not any(p.requires_grad for p in vit.parameters())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert_close(vit(images).pooled, clip.encode_image(images), **TOL)
    assert tuple(preprocess.transforms[-1].mean) == tuple(open_clip.OPENAI_DATASET_MEAN)  # OpenCLIP's own transform


def test_unsupported_openclip_tower_is_refused_clearly():
    clip = open_clip.create_model("ViT-S-32", pretrained=None)
    clip.visual.pool_type = "avg"
    with pytest.raises(ValueError, match="global average pooling"):
        vit_config_from_openclip(clip.visual)
