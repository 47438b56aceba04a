"""OpenCLIP's vision weights in our hand-written ViT, frozen, with OpenCLIP's own preprocessing."""

import contextlib
import logging
import os
import socket
from urllib.parse import urlparse

import torch
from torch import nn

from model.errors import CaptionerError
from model.vit import ViTConfig, VisionTransformer

SIZES = {"ViT-B-32": "about 600 MB", "ViT-B-16": "about 600 MB", "ViT-L-14": "about 1.7 GB"}  # float32 weights
OFFLINE = "without the network, give --clip-pretrained FILE (a checkpoint file) or --clip-pretrained none (random weights)"


class ClipWeightsError(CaptionerError):
    """OpenCLIP weights named by a tag that are not cached here and cannot be downloaded now."""


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

    with fetched_quietly(name, pretrained):
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    config = vit_config_from_openclip(clip.visual)
    config.fused = fused
    with torch.device("meta"):  # no random initialisation of weights about to be replaced (seconds for ViT-L-14)
        vit = VisionTransformer(config)
    vit.load_openclip_state_dict(clip.visual.state_dict(), assign=True)
    vit.requires_grad_(False).eval()
    vit.preprocess_cfg = dict(clip.visual.preprocess_cfg)  # size, mean, std, interpolation: to rebuild `preprocess`
    return vit, preprocess


def hub_file(name, tag):
    """(repo, cache folder) of the Hugging Face hub repository open_clip downloads `tag` from, or None where
    nothing is downloaded: no tag, a local file, an unknown tag (open_clip says so), or weights already cached."""
    import open_clip

    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # open_clip then downloads from its URL, with its own messages
        return None
    hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub", "") if tag and not os.path.isfile(tag) else ""
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    cache = constants.HF_HUB_CACHE
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    cached = any(isinstance(try_to_load_from_cache(repo, f, cache_dir=cache), str) for f in names)
    return None if cached else (repo, cache)


def hub_unreachable():
    """Why the Hugging Face hub cannot be reached now (HF_HUB_OFFLINE, no route to it), or None: one connection
    tried for at most 5 s, where open_clip's downloader would retry for a minute. Behind a proxy, it is let try."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e.strerror or e})"
    return None


@contextlib.contextmanager
def fetched_quietly(name, tag):
    """Around open_clip's loading of `tag`: one line before a download (what, how large, where it is cached),
    a ClipWeightsError in one line where it cannot happen, and none of the hub's retry messages."""
    where = hub_file(name, tag)
    if where is None:
        yield
        return
    repo, cache = where
    print(f"OpenCLIP {name} '{tag}': its weights ({SIZES.get(name, 'hundreds of MB')}) are downloaded on first use "
          f"from huggingface.co/{repo} and cached in {cache}")
    why = hub_unreachable()
    if why:
        raise ClipWeightsError(f"OpenCLIP {name} '{tag}' weights cannot be downloaded: {why}; {OFFLINE}")
    logging.disable(logging.ERROR)  # the hub's retries and open_clip's own error: the line below says it
    try:
        yield
    except RuntimeError as e:
        if "Failed to download" not in str(e):
            raise
        raise ClipWeightsError(f"OpenCLIP {name} '{tag}' weights could not be downloaded; {OFFLINE}") from None
    finally:
        logging.disable(logging.NOTSET)
