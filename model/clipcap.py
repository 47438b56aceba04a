"""ClipCap's released checkpoints (Mokady et al. 2021, github.com/rmokady/CLIP_prefix_caption) in our modules.

ClipCap maps a CLIP image embedding to P prefix vectors (`clip_project`: an MLP, or its transformer
mapper) and runs GPT-2 (`gpt`) over [prefix ; caption] as one causal sequence, the prefix taking the
first positions. Our ClipCapDecoder (model/clipcap_layout.py) does exactly that with `prefix_mapper="mlp"` (or
"clipcap-transformer"), `cross_attention=False` and `gpt_prefix=True`; the encoder is a frozen OpenCLIP
ViT-B-32 (load_clip_vit), whose pooled output is CLIP's image embedding.

The checkpoint is a torch.save'd state dict of tensors, read with torch.load(weights_only=True).
"""

from pathlib import Path

import torch

from model.caption_model import CaptionModel, CaptionModelConfig, build_decoder
from model.checkpoint import load_weights_only
from model.decoder import DecoderConfig
from model.hugging_face import HuggingFaceError, gpt2_state_dict, load_into


def read_clipcap(path):
    path = Path(path)
    if not path.is_file():
        raise HuggingFaceError(f"{path}: no such ClipCap checkpoint")
    state = load_weights_only(path, HuggingFaceError)
    if not isinstance(state, dict) or "gpt.transformer.wte.weight" not in state:
        raise HuggingFaceError(f"{path}: not a ClipCap checkpoint (no gpt.transformer.wte.weight)")
    if "clip_project.model.0.weight" not in state and "clip_project.prefix_const" not in state:
        raise HuggingFaceError(f"{path}: not a ClipCap checkpoint (no clip_project.model.0.weight or "
                               "clip_project.prefix_const)")
    return state


def clipcap_decoder_config(state, where):
    """Every size is in the tensors' shapes; GPT-2's heads are 64 wide in every released size."""
    V, C = state["gpt.transformer.wte.weight"].shape
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("gpt.transformer.h."))
    if "clip_project.prefix_const" in state:  # the transformer mapper
        P = state["clip_project.prefix_const"].shape[0]
        clip_dim, clip_length = state["clip_project.linear.weight"].shape[1], state["clip_project.linear.weight"].shape[0] // C
        if clip_length != P:
            raise HuggingFaceError(f"{where}: a clip length of {clip_length} and a prefix of {P} differ; only equal "
                                   "lengths are supported (as in ClipCap's released weights)")
        mapper = dict(prefix_mapper="clipcap-transformer",
                      mapper_layers=1 + max(int(k.split(".")[3]) for k in state if k.startswith("clip_project.transformer.layers.")))
    else:
        hidden, clip_dim = state["clip_project.model.0.weight"].shape  # (P * C // 2, E)
        P = state["clip_project.model.2.weight"].shape[0] // C  # (P * C, P * C // 2)
        if hidden != P * C // 2:
            raise HuggingFaceError(f"{where}: the prefix mapper's sizes ({hidden}, {clip_dim}) do not fit ClipCap's layout")
        mapper = dict(prefix_mapper="mlp")
    if C % 64:
        raise HuggingFaceError(f"{where}: GPT-2's width {C} is not a multiple of its 64-wide heads")
    try:
        return DecoderConfig(vocab_size=V, max_len=state["gpt.transformer.wpe.weight"].shape[0], width=C,
                             layers=layers, heads=C // 64, mlp_ratio=4.0, prefix_len=P, clip_dim=clip_dim,
                             cross_attention=False, dropout=0.0, gelu="tanh", gpt_prefix=True, **mapper)
    except ValueError as e:  # a size out of range (model/sizes.py)
        raise HuggingFaceError(f"{where}: {e}") from None


def mapper_state_dict(state, config):
    """clip_project's weights by our PrefixMapper's names."""
    if config.prefix_mapper == "mlp":
        return {f"prefix.mlp.{k}": state[f"clip_project.model.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
    C = config.width
    ours = {"prefix.linear.weight": state["clip_project.linear.weight"],
            "prefix.linear.bias": state["clip_project.linear.bias"],
            "prefix.constants": state["clip_project.prefix_const"]}
    for i in range(config.mapper_layers):
        t, b = f"clip_project.transformer.layers.{i}.", f"prefix.blocks.{i}."
        q, kv = state[t + "attn.to_queries.weight"], state[t + "attn.to_keys_values.weight"]  # (C, C), (2C, C): keys, values
        ours[b + "attn.in_proj_weight"] = torch.cat([q, kv])  # rows: W_q, W_k, W_v
        ours[b + "attn.in_proj_bias"] = torch.cat([state.get(t + "attn.to_queries.bias", q.new_zeros(C)),
                                                    state.get(t + "attn.to_keys_values.bias", q.new_zeros(2 * C))])
        for theirs, mine in (("attn.project", "attn.out_proj"), ("norm1", "ln_1"), ("norm2", "ln_2"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            ours[f"{b}{mine}.weight"], ours[f"{b}{mine}.bias"] = state[f"{t}{theirs}.weight"], state[f"{t}{theirs}.bias"]
    return ours


def load_clipcap_decoder(path):
    """A ClipCap checkpoint (MLP or transformer mapper) -> our ClipCapDecoder, in eval mode."""
    state = read_clipcap(path)
    try:
        config = clipcap_decoder_config(state, path)
        ours = gpt2_state_dict(state, config, prefix="gpt.") | mapper_state_dict(state, config)
    except KeyError as e:
        raise HuggingFaceError(f"{path}: the weights lack {e.args[0]}: not a ClipCap checkpoint") from None
    return load_into(lambda: build_decoder(config), ours, path).eval()


def clipcap_model(path, clip_vit):
    """A ClipCap checkpoint and a CLIP VisionTransformer (load_clip_vit("ViT-B-32", ...)) -> CaptionModel."""
    decoder = load_clipcap_decoder(path)
    if clip_vit.config.output_dim != decoder.config.clip_dim:
        raise HuggingFaceError(f"{path}: its prefix mapper reads {decoder.config.clip_dim}-wide CLIP embeddings; "
                               f"this encoder makes {clip_vit.config.output_dim}")
    model = CaptionModel(CaptionModelConfig(clip_vit.config, decoder.config, frozen_encoder=True))
    model.encoder.load_state_dict(clip_vit.state_dict())
    model.decoder.load_state_dict(decoder.state_dict())
    return model.eval()
