"""The whole captioning model: an optional ViT and the decoder, from pixels (or cached features) to tokens."""

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from model.config import from_dict, to_dict
from model.clipcap_layout import ClipCapDecoder
from model.decoder import CaptionDecoder, DecoderConfig
from model.sampling import DecodingOptions, decode
from model.vit import VisionTransformer, ViTConfig


def build_decoder(config: DecoderConfig):
    """The decoder a config describes: ClipCap's causal layout (model/clipcap_layout.py) when gpt_prefix, else ours."""
    return (ClipCapDecoder if config.gpt_prefix else CaptionDecoder)(config)


@dataclass
class CaptionModelConfig:
    vit: ViTConfig = None  # the image encoder; None when the model only reads precomputed features
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    frozen_encoder: bool = False  # True for CLIP weights: no gradients, always in eval mode

    def to_dict(self):
        return to_dict(self)

    @classmethod
    def from_dict(cls, values, where="model config"):
        """The inverse of to_dict; every field must be present and known (model/config.py)."""
        return from_dict(cls, values, where)


class CaptionModel(nn.Module):
    """Images (or precomputed CLIP features) and caption tokens -> next-token logits; images -> token ids."""

    def __init__(self, config: CaptionModelConfig):
        super().__init__()
        self.config = config
        self.encoder = VisionTransformer(config.vit) if config.vit is not None else None
        self.decoder = build_decoder(config.decoder)
        self.fast_steps = None  # model/compiled.py's CompiledDecoder, which generate() decodes with after compile_steps
        if config.frozen_encoder and self.encoder is not None:
            self.encoder.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.config.frozen_encoder and self.encoder is not None:
            self.encoder.eval()  # a frozen encoder stays in eval mode while the decoder trains
        return self

    def encode(self, images):
        """images: (B, 3, H, W), normalised -> (clip_embed (B, E), patches (B, N, patch_dim)); the patches
        start with the class token when the ViT's config says the decoder reads it too."""
        if self.encoder is None:
            raise ValueError("this model has no image encoder: it reads precomputed features")
        return self.features_of(self.encoder(images))

    def features_of(self, vision_output):
        """A VisionOutput -> (clip_embed, patches) as the decoder reads them (the class token first when
        the ViT's config says so)."""
        out = vision_output
        return out.pooled, out.tokens if self.reads_class_token else out.patches

    def image_inputs(self, images=None, features=None):
        """What the decoder reads of the images: encoded here from pixels, or given as precomputed
        features (clip_embed, patches), e.g. from the feature cache."""
        if (images is None) == (features is None):
            raise ValueError("pass either images or features (clip_embed, patches)")
        return self.encode(images) if images is not None else features

    @property
    def reads_class_token(self):
        """Whether the decoder's memory starts with the class token before the patches (ViT-GPT2)."""
        return self.encoder is not None and self.encoder.config.class_token_in_memory

    def memory_mask(self, patch_mask):
        """A (B, N) mask over the patches -> one over the decoder's memory (the class token stays visible)."""
        if patch_mask is None or not self.reads_class_token:
            return patch_mask
        return torch.cat([patch_mask.new_ones(patch_mask.size(0), 1), patch_mask], dim=1)  # (B, 1 + N)

    def conditioning(self, images=None, features=None, prefix_images=None):
        """(clip_embed, patches) the decoder reads; prefix_images (B, 3, H, W), if given, make the prefix
        from their own CLIP embedding instead (a region's crop) while the patches stay the image's."""
        clip_embed, patches = self.image_inputs(images, features)
        if prefix_images is not None:
            clip_embed, _ = self.encode(prefix_images)
        return clip_embed, patches

    def forward(self, tokens, images=None, features=None, lengths=None, patch_mask=None, return_attn=False):
        """tokens: (B, T); images: (B, 3, H, W) or features: ((B, E), (B, N, patch_dim))
        -> DecoderOutput (logits (B, T, V))."""
        clip_embed, patches = self.image_inputs(images, features)
        return self.decoder(tokens, clip_embed, patches, lengths, self.memory_mask(patch_mask), return_attn=return_attn)

    @torch.no_grad()
    def generate(self, bos_id, eos_id, images=None, features=None, options=DecodingOptions(), patch_mask=None,
                 prefix_images=None, generator=None, deadline=None):
        """From pixels (or features) to caption token ids in one call, decoded as `options` say.

        patch_mask: (B, N) patches cross-attention may look at; prefix_images: (B, 3, H, W) whose CLIP
        embedding makes the prefix instead (a region's crop). deadline: see model.sampling.decode.
        -> a list of options.num (B, T_new) tensors.
        """
        clip_embed, patches = self.conditioning(images, features, prefix_images)
        return decode(self.fast_steps or self.decoder, clip_embed, patches, bos_id, eos_id, options, self.memory_mask(patch_mask),
                      generator, deadline)

    @torch.no_grad()
    def cross_attention(self, tokens, images=None, features=None, patch_mask=None, prefix_images=None):
        """Where each caption position looked: tokens (B, T), the start token then the caption
        -> (layers, B, H, T, N) cross-attention weights over the patches (row t is the query that
        predicted token t + 1), or None for a decoder without cross-attention (pure ClipCap)."""
        clip_embed, patches = self.conditioning(images, features, prefix_images)
        out = self.decoder(tokens, clip_embed, patches, patch_mask=self.memory_mask(patch_mask), return_attn=True)
        if out.cross_attn[0] is None:
            return None
        P, first_patch = self.decoder.config.prefix_len, int(self.reads_class_token)
        return torch.stack(out.cross_attn)[:, :, :, P:, first_patch:]  # (layers, B, H, T, N), caption rows


def build_caption_model(vit: ViTConfig, decoder: DecoderConfig, vocab_size, frozen_vit=None):
    """A CaptionModel whose decoder fits its encoder and vocabulary.

    Without `frozen_vit`, a ViT of config `vit` trained together with the decoder (its pooled output
    as wide as its tokens). With `frozen_vit` (a trained VisionTransformer, e.g. CLIP's), a copy of it,
    frozen; `vit` is then ignored.
    """
    if frozen_vit is not None:
        vit = frozen_vit.config
    else:
        vit = dataclasses.replace(vit, output_dim=vit.width)
    decoder = dataclasses.replace(decoder, vocab_size=vocab_size, clip_dim=vit.output_dim, patch_dim=vit.width)
    model = CaptionModel(CaptionModelConfig(vit, decoder, frozen_encoder=frozen_vit is not None))
    if frozen_vit is not None:
        model.encoder.load_state_dict(frozen_vit.state_dict())
    return model
