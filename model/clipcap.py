"""ClipCap's released checkpoints (Mokady et al. 2021, github.com/rmokady/CLIP_prefix_caption) in our modules.

ClipCap maps a CLIP image embedding to P prefix vectors with an MLP (`clip_project`) and runs GPT-2
(`gpt`) over [prefix ; caption] as one causal sequence, the prefix taking the first positions. Our
CaptionDecoder does exactly that with `prefix_mapper="mlp"`, `cross_attention=False` and
`gpt_prefix=True`; the encoder is a frozen OpenCLIP ViT-B-32 (load_clip_vit), whose pooled output is
CLIP's image embedding.

The checkpoint is a torch.save'd state dict of tensors, read with torch.load(weights_only=True).
"""

from pathlib import Path

from model.caption_model import CaptionModel, CaptionModelConfig
from model.checkpoint import load_weights_only
from model.decoder import CaptionDecoder, DecoderConfig
from model.hugging_face import HuggingFaceError, gpt2_state_dict, load_into


def read_clipcap(path):
    path = Path(path)
    if not path.is_file():
        raise HuggingFaceError(f"{path}: no such ClipCap checkpoint")
    state = load_weights_only(path, HuggingFaceError)
    if not isinstance(state, dict) or "gpt.transformer.wte.weight" not in state:
        raise HuggingFaceError(f"{path}: not a ClipCap checkpoint (no gpt.transformer.wte.weight)")
    if any(k.startswith("clip_project.transformer.") for k in state):
        raise HuggingFaceError(f"{path}: ClipCap's transformer mapper is not supported yet, only its MLP mapper")
    if "clip_project.model.0.weight" not in state:
        raise HuggingFaceError(f"{path}: not a ClipCap checkpoint (no clip_project.model.0.weight)")
    return state


def clipcap_decoder_config(state, where):
    """Every size is in the tensors' shapes; GPT-2's heads are 64 wide in every released size."""
    V, C = state["gpt.transformer.wte.weight"].shape
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("gpt.transformer.h."))
    hidden, clip_dim = state["clip_project.model.0.weight"].shape  # (P * C // 2, E)
    P = state["clip_project.model.2.weight"].shape[0] // C  # (P * C, P * C // 2)
    if hidden != P * C // 2 or C % 64:
        raise HuggingFaceError(f"{where}: the prefix mapper's sizes ({hidden}, {clip_dim}) do not fit ClipCap's layout")
    return DecoderConfig(vocab_size=V, max_len=state["gpt.transformer.wpe.weight"].shape[0], width=C, layers=layers,
                         heads=C // 64, mlp_ratio=4.0, prefix_len=P, clip_dim=clip_dim, prefix_mapper="mlp",
                         cross_attention=False, dropout=0.0, gelu="tanh", gpt_prefix=True)


def load_clipcap_decoder(path):
    """A ClipCap checkpoint (MLP mapper) -> our CaptionDecoder, in eval mode."""
    state = read_clipcap(path)
    config = clipcap_decoder_config(state, path)
    decoder = CaptionDecoder(config)
    ours = gpt2_state_dict(state, config, prefix="gpt.")
    ours |= {f"prefix.mlp.{k}": state[f"clip_project.model.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
    load_into(decoder, ours, path)
    return decoder.eval()


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
