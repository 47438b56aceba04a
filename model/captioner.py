"""The whole captioner: an optional ViT trained with the decoder, and the decoder."""

from dataclasses import asdict, dataclass, field

from torch import nn

from model.decoder import CaptionDecoder, DecoderConfig
from model.vit import ViTConfig, VisionTransformer


@dataclass
class CaptionerConfig:
    vit: ViTConfig = None  # the image encoder; None when the captioner only reads precomputed features
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    frozen_encoder: bool = False  # True for CLIP weights: no gradients, always in eval mode

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        vit = ViTConfig(**d["vit"]) if d.get("vit") else None
        return cls(vit, DecoderConfig(**d["decoder"]), d.get("frozen_encoder", False))


class Captioner(nn.Module):
    """Images (or precomputed CLIP features) and caption tokens -> next-token logits."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        self.encoder = VisionTransformer(config.vit) if config.vit is not None else None
        self.decoder = CaptionDecoder(config.decoder)
        if config.frozen_encoder and self.encoder is not None:
            self.encoder.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.config.frozen_encoder and self.encoder is not None:
            self.encoder.eval()  # a frozen encoder stays in eval mode while the decoder trains
        return self

    def encode(self, images):
        """images: (B, 3, H, W) -> (clip_embed (B, E), patches (B, N, patch_dim))."""
        if self.encoder is None:
            raise ValueError("this captioner has no image encoder: it reads precomputed features")
        out = self.encoder(images)
        return out.pooled, out.patches

    def forward(self, tokens, clip_embed, patches=None, lengths=None, patch_mask=None, return_attn=False):
        """tokens: (B, T), clip_embed: (B, E), patches: (B, N, patch_dim) -> DecoderOutput (logits (B, T, V))."""
        return self.decoder(tokens, clip_embed, patches, lengths, patch_mask, return_attn=return_attn)
