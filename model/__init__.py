"""A hand-written image captioner: ViT encoder, prefix + cross-attention decoder, sampler.

Shape letters used in every comment under model/:
    B batch, K beams, T caption tokens, P prefix tokens, L = P + T decoder positions,
    N image tokens (class token + patches), S keys (whatever is attended over),
    C width, E CLIP embedding width, H heads, D head width (C // H), V vocabulary.
"""

from model.attention import MultiHeadAttention, attention, causal_mask, padding_mask, prefix_lm_mask
from model.caption_model import CaptionModel, CaptionModelConfig, build_caption_model, build_decoder
from model.clipcap_layout import ClipCapDecoder
from model.decoder import CaptionDecoder, DecoderBlock, DecoderConfig, KVCache
from model.prefix import PrefixMapper
from model.sampling import DecodingOptions, beam_search, best_beams, decode, sample, top_k_filter, top_p_filter
from model.vit import PatchEmbedding, ViTConfig, VisionTransformer

__all__ = [
    "attention", "causal_mask", "padding_mask", "prefix_lm_mask", "MultiHeadAttention",
    "ViTConfig", "PatchEmbedding", "VisionTransformer",
    "DecoderConfig", "PrefixMapper", "DecoderBlock", "CaptionDecoder", "KVCache", "ClipCapDecoder", "build_decoder",
    "top_k_filter", "top_p_filter", "sample", "best_beams", "beam_search", "DecodingOptions", "decode",
    "CaptionModelConfig", "CaptionModel", "build_caption_model",
]
