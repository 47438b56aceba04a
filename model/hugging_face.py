"""Hugging Face checkpoints into our own modules: GPT-2 (and DistilGPT2) into CaptionDecoder, ViT into
VisionTransformer, and a VisionEncoderDecoder (ViT + GPT-2, e.g. nlpconnect/vit-gpt2-image-captioning) into
CaptionModel. A name map per model, no second implementation: the captions then come from our attention,
our KV cache and our sampler, and every attention step can be drawn.

A folder in Hugging Face's layout holds config.json and model.safetensors (or pytorch_model.bin, read with
torch.load(weights_only=True): no code in it runs). Each function refuses what it cannot load in one line
that names the file.
"""

import dataclasses
from pathlib import Path

import torch

from model.caption_model import CaptionModel, CaptionModelConfig, build_decoder
from model.checkpoint import (
    CheckpointError,
    load_safetensors,
    load_weights_only,
    meta_shapes,
    shape_difference,
    usable_weights,
)
from model.decoder import DecoderConfig
from model.files import read_json
from model.vit import ViTConfig, VisionTransformer


class HuggingFaceError(CheckpointError):
    """A folder or file that is not what the loader expects; the message names it."""


# ---------------------------------------------------------------------------------------------- files


def read_config(folder):
    path = Path(folder) / "config.json"
    if not path.exists():
        raise HuggingFaceError(f"{path} does not exist: not a Hugging Face model folder")
    return read_json(path, HuggingFaceError)


def read_weights(folder):
    """The state dict in `folder`: model.safetensors, else pytorch_model.bin (weights only)."""
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return load_safetensors(folder / "model.safetensors", HuggingFaceError)
    if (folder / "pytorch_model.bin").exists():
        return load_weights_only(folder / "pytorch_model.bin", HuggingFaceError)
    raise HuggingFaceError(f"{folder}: no model.safetensors or pytorch_model.bin")


def require(config, key, expected, where):
    if config.get(key, expected) != expected:
        raise HuggingFaceError(f"{where}: {key} = {config[key]!r} is not supported (only {expected!r})")


def config_of(kind, where, **fields):
    """kind(**fields) (our ViTConfig or DecoderConfig) from a Hugging Face config's values, or one line naming
    `where` for a missing, mistyped or out-of-range value (model/sizes.py)."""
    try:
        return kind(**{name: value() for name, value in fields.items()})
    except KeyError as e:
        raise HuggingFaceError(f"{where}: missing {e.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise HuggingFaceError(f"{where}: {e}") from None


def fits(build, state_dict, where, strict=True):
    """Refuse weights whose names or shapes differ from the module build() makes, in one line naming `where`,
    before the module is allocated (it is built on the meta device to compare), and weights it could not
    caption with (integers, NaN: model/checkpoint.py's usable_weights)."""
    usable_weights(state_dict, where, HuggingFaceError)
    problem = shape_difference(meta_shapes(build), {k: v.shape for k, v in state_dict.items()}, strict)
    if problem:
        raise HuggingFaceError(f"{where}: the weights do not fit the config: {problem}")


def load_into(build, state_dict, where):
    """build() with `state_dict` loaded, once its names and shapes are checked against them (see fits)."""
    fits(build, state_dict, where)
    module = build()
    module.load_state_dict(state_dict)
    return module


# ---------------------------------------------------------------------------------------------- GPT-2


def gpt2_decoder_config(config, where="config.json", patch_dim=None):
    """A GPT2Config's dict (GPT-2, DistilGPT2; with add_cross_attention or not) -> our DecoderConfig."""
    if config.get("model_type") != "gpt2":
        raise HuggingFaceError(f"{where}: model_type is {config.get('model_type')!r}, not 'gpt2'")
    require(config, "activation_function", "gelu_new", where)
    require(config, "layer_norm_epsilon", 1e-5, where)
    require(config, "scale_attn_weights", True, where)
    require(config, "scale_attn_by_inverse_layer_idx", False, where)
    width = config.get("n_embd")
    patch_dim = patch_dim or width
    return config_of(
        DecoderConfig, where, vocab_size=lambda: config["vocab_size"], max_len=lambda: config["n_positions"],
        width=lambda: config["n_embd"], layers=lambda: config["n_layer"], heads=lambda: config["n_head"],
        mlp_ratio=lambda: (config.get("n_inner") or 4 * width) / width, prefix_len=lambda: 0, clip_dim=lambda: width,
        patch_dim=lambda: patch_dim, cross_attention=lambda: bool(config.get("add_cross_attention", False)),
        dropout=lambda: 0.0, gelu=lambda: "tanh", patch_proj=lambda: "none" if patch_dim == width else "linear")


def conv1d(weight):
    """GPT-2's Conv1D stores a linear map as (in, out); nn.Linear and our attention store (out, in)."""
    return weight.t()


def gpt2_state_dict(hf, config: DecoderConfig, prefix=""):
    """The state dict of a GPT2LMHeadModel (or GPT2Model) -> our CaptionDecoder's names.

    prefix: what precedes "transformer." in the file ("decoder." inside a VisionEncoderDecoder)."""
    t = prefix + "transformer." if prefix + "transformer.wte.weight" in hf else prefix
    ours = {"token_embedding.weight": hf[t + "wte.weight"],
            "positional_embedding": hf[t + "wpe.weight"],
            "ln_f.weight": hf[t + "ln_f.weight"], "ln_f.bias": hf[t + "ln_f.bias"]}
    for i in range(config.layers):
        h, b = f"{t}h.{i}.", f"blocks.{i}."
        for theirs, mine in (("ln_1", "ln_1"), ("ln_2", "ln_3"), ("ln_cross_attn", "ln_2")):
            if h + theirs + ".weight" in hf:
                ours[b + mine + ".weight"], ours[b + mine + ".bias"] = hf[h + theirs + ".weight"], hf[h + theirs + ".bias"]
        ours[b + "self_attn.in_proj_weight"] = conv1d(hf[h + "attn.c_attn.weight"])  # rows: W_q, W_k, W_v
        ours[b + "self_attn.in_proj_bias"] = hf[h + "attn.c_attn.bias"]
        ours[b + "self_attn.out_proj.weight"] = conv1d(hf[h + "attn.c_proj.weight"])
        ours[b + "self_attn.out_proj.bias"] = hf[h + "attn.c_proj.bias"]
        if config.cross_attention:  # queries from the caption (q_attn), keys and values from the image (c_attn)
            x = h + "crossattention."
            ours[b + "cross_attn.in_proj_weight"] = torch.cat([conv1d(hf[x + "q_attn.weight"]),
                                                               conv1d(hf[x + "c_attn.weight"])])  # (3C, C)
            ours[b + "cross_attn.in_proj_bias"] = torch.cat([hf[x + "q_attn.bias"], hf[x + "c_attn.bias"]])
            ours[b + "cross_attn.out_proj.weight"] = conv1d(hf[x + "c_proj.weight"])
            ours[b + "cross_attn.out_proj.bias"] = hf[x + "c_proj.bias"]
        ours[b + "mlp.c_fc.weight"], ours[b + "mlp.c_fc.bias"] = conv1d(hf[h + "mlp.c_fc.weight"]), hf[h + "mlp.c_fc.bias"]
        ours[b + "mlp.c_proj.weight"] = conv1d(hf[h + "mlp.c_proj.weight"])
        ours[b + "mlp.c_proj.bias"] = hf[h + "mlp.c_proj.bias"]
    return ours


def load_gpt2_decoder(folder):
    """A GPT-2 or DistilGPT2 folder (GPT2LMHeadModel) -> our CaptionDecoder with its weights, in eval mode.
    Without cross-attention in the checkpoint (plain GPT-2), the decoder has none either; fresh
    cross-attention layers for captioning are made by `with_fresh_cross_attention`."""
    where = Path(folder) / "config.json"
    config = gpt2_decoder_config(read_config(folder), where)
    return load_into(lambda: build_decoder(config), read_gpt2_weights(folder, config), Path(folder)).eval()


def read_gpt2_weights(folder, config, max_len=None):
    """GPT-2's weights in `folder` by our names; config: the file's own (gpt2_decoder_config). Positions
    beyond max_len are dropped (captions are short)."""
    try:
        weights = gpt2_state_dict(read_weights(folder), config)
    except KeyError as e:
        raise HuggingFaceError(f"{Path(folder)}: the weights lack {e.args[0]}: not a GPT-2 checkpoint") from None
    weights["positional_embedding"] = weights["positional_embedding"][:max_len]
    return weights


def gpt2_captioning_decoder(folder, base: DecoderConfig):
    """(config, weights): the config of a caption decoder that starts from a GPT-2 or DistilGPT2 folder (GPT-2's
    sizes and vocabulary, with `base`'s prefix (ClipCap's layout when it has one), cross-attention, caption
    length and dropout), and the folder's weights by our names, checked against that config. The file is
    read once; load_gpt2_weights then puts the weights into the decoder built from the config."""
    gpt = gpt2_decoder_config(read_config(folder), Path(folder) / "config.json")
    P = base.prefix_len
    config = dataclasses.replace(gpt, prefix_len=P, gpt_prefix=P > 0, prefix_mapper=base.prefix_mapper,
                                 cross_attention=base.cross_attention, dropout=base.dropout,
                                 max_len=min(gpt.max_len, base.max_len + P), patch_proj="linear_norm")
    weights = read_gpt2_weights(folder, gpt, config.max_len)
    fits(lambda: build_decoder(config), weights, Path(folder), strict=False)
    return config, weights  # checked against each other before the caller builds the decoder


def load_gpt2_weights(decoder, weights, folder):
    """Load gpt2_captioning_decoder's weights (read from `folder`) into a decoder of its config; what GPT-2 has
    no weights for (fresh cross-attention, a prefix mapper, the patch projection) stays as initialised.
    -> the names left fresh."""
    missing, unexpected = decoder.load_state_dict(weights, strict=False)
    if unexpected:
        raise HuggingFaceError(f"{folder}: weights the decoder has no place for: {', '.join(unexpected[:3])}")
    return missing


# ---------------------------------------------------------------------------------------------- ViT


def vit_config(config, where="config.json", class_token_in_memory=False):
    """A ViTConfig's dict (google/vit-base-patch16-224-in21k and the like) -> our ViTConfig."""
    if config.get("model_type") != "vit":
        raise HuggingFaceError(f"{where}: model_type is {config.get('model_type')!r}, not 'vit'")
    require(config, "hidden_act", "gelu", where)
    require(config, "qkv_bias", True, where)
    require(config, "num_channels", 3, where)
    return config_of(
        ViTConfig, where, image_size=lambda: config["image_size"], patch_size=lambda: config["patch_size"],
        width=lambda: config["hidden_size"], layers=lambda: config["num_hidden_layers"],
        heads=lambda: config["num_attention_heads"], mlp_ratio=lambda: config["intermediate_size"] / config["hidden_size"],
        output_dim=lambda: config["hidden_size"], patch_bias=lambda: True, ln_pre=lambda: False,
        norm_eps=lambda: config.get("layer_norm_eps", 1e-12), class_token_in_memory=lambda: class_token_in_memory)


def vit_state_dict(hf, config: ViTConfig, prefix=""):
    """The state dict of a ViTModel -> our VisionTransformer's names. Our `proj` (CLIP's projection) has no
    counterpart: it becomes the identity, so `pooled` is the class token after the last LayerNorm."""
    e = prefix + "embeddings."
    ours = {"class_embedding": hf[e + "cls_token"].reshape(-1),
            "positional_embedding": hf[e + "position_embeddings"][0],
            "patch_embed.proj.weight": hf[e + "patch_embeddings.projection.weight"],
            "patch_embed.proj.bias": hf[e + "patch_embeddings.projection.bias"],
            "ln_post.weight": hf[prefix + "layernorm.weight"], "ln_post.bias": hf[prefix + "layernorm.bias"],
            "proj": torch.eye(config.width)}
    for i in range(config.layers):
        h, b = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
        a = h + "attention.attention."
        ours[b + "attn.in_proj_weight"] = torch.cat([hf[a + n + ".weight"] for n in ("query", "key", "value")])
        ours[b + "attn.in_proj_bias"] = torch.cat([hf[a + n + ".bias"] for n in ("query", "key", "value")])
        ours[b + "attn.out_proj.weight"] = hf[h + "attention.output.dense.weight"]
        ours[b + "attn.out_proj.bias"] = hf[h + "attention.output.dense.bias"]
        for theirs, mine in (("layernorm_before", "ln_1"), ("layernorm_after", "ln_2"),
                             ("intermediate.dense", "mlp.c_fc"), ("output.dense", "mlp.c_proj")):
            ours[f"{b}{mine}.weight"], ours[f"{b}{mine}.bias"] = hf[f"{h}{theirs}.weight"], hf[f"{h}{theirs}.bias"]
    return ours


def load_vit(folder):
    """A ViTModel folder -> our VisionTransformer with its weights, in eval mode."""
    config = vit_config(read_config(folder), Path(folder) / "config.json")
    hf = read_weights(folder)
    prefix = "vit." if "vit.embeddings.cls_token" in hf else ""  # ViTForImageClassification keeps it under vit.
    try:
        state = vit_state_dict(hf, config, prefix)
    except KeyError as e:
        raise HuggingFaceError(f"{Path(folder)}: the weights lack {e.args[0]}: not a ViT checkpoint") from None
    return load_into(lambda: VisionTransformer(config), state, Path(folder)).eval()


# ---------------------------------------------------------------------------------------------- ViT + GPT-2


CAPTION_POSITIONS = 64  # GPT-2 has 1,024 positions; a caption needs far fewer, and decoding stops here at the latest


def vision_encoder_decoder(folder):
    """A VisionEncoderDecoder folder with a ViT encoder and a GPT-2 decoder -> (CaptionModel, its config dict).
    The decoder cross-attends to every encoder token, the class token included, as Hugging Face's does; it
    keeps GPT-2's first CAPTION_POSITIONS positions, so a caption (start token included) has at most 64 tokens."""
    where = Path(folder) / "config.json"
    config = read_config(folder)
    if config.get("model_type") != "vision-encoder-decoder":
        raise HuggingFaceError(f"{where}: model_type is {config.get('model_type')!r}, not 'vision-encoder-decoder'"
                               " (a ViT-GPT2 captioner such as nlpconnect/vit-gpt2-image-captioning)")
    vit = vit_config(config.get("encoder", {}), f"{where}, encoder", class_token_in_memory=True)
    decoder = gpt2_decoder_config(config.get("decoder", {}), f"{where}, decoder", patch_dim=vit.width)
    decoder = dataclasses.replace(decoder, max_len=min(decoder.max_len, CAPTION_POSITIONS))
    if not decoder.cross_attention:
        raise HuggingFaceError(f"{where}, decoder: add_cross_attention is false: the decoder cannot see the image")
    hf = read_weights(folder)
    try:
        state = {"encoder." + k: v for k, v in vit_state_dict(hf, vit, "encoder.").items()}
        state |= {"decoder." + k: v for k, v in gpt2_state_dict(hf, decoder, "decoder.").items()}
        state["decoder.positional_embedding"] = state["decoder.positional_embedding"][: decoder.max_len]
        if decoder.patch_proj == "linear":
            state["decoder.patch_proj.weight"] = hf["enc_to_dec_proj.weight"]
            state["decoder.patch_proj.bias"] = hf["enc_to_dec_proj.bias"]
    except KeyError as e:
        raise HuggingFaceError(f"{Path(folder)}: the weights lack {e.args[0]}: not a ViT + GPT-2 checkpoint") from None
    model = load_into(lambda: CaptionModel(CaptionModelConfig(vit, decoder, frozen_encoder=False)), state, Path(folder))
    return model.eval(), config
