"""ClipCap's layout (Mokady et al. 2021): GPT-2 over [prefix ; caption] as one causal sequence.

Beside the lesson in model/decoder.py, which sees the prefix whole and gives the caption its own position
table, ClipCap's decoder changes two things and nothing else:
- the prefix takes the first P rows of the one position table, and is read causally like the caption;
- there is no start token: the prefix's last position predicts the first word, so a first call drops the
  start token it is given (the sampler's and the training batches' layout stays the same for both).
It is what a config with gpt_prefix=True builds (model.caption_model.build_decoder): released ClipCap
checkpoints (model/clipcap.py) and a GPT-2 decoder trained with a prefix (train.py --gpt2). Tested equal
to ClipCap's own forward (tests/test_clipcap.py) and to Hugging Face's GPT-2 (tests/test_hugging_face.py).
"""

import torch

from model.attention import causal_mask
from model.decoder import CaptionDecoder
from model.hooks import plugged


class ClipCapDecoder(CaptionDecoder):
    """CaptionDecoder in ClipCap's causal [prefix ; caption] layout, one position table for both."""

    gpt_prefix = True

    def first_call(self, tokens, clip_embed):
        """[prefix ; caption without its start token] embedded, (B, P + T - 1, C), and GPT-2's causal mask."""
        P = self.config.prefix_len
        caption = self.embed(tokens[:, 1:], P)  # (B, T - 1, C), from row P on
        prefix = self.prefix(clip_embed).to(caption.dtype) + self.positional_embedding[:P]  # (B, P, C): rows 0 to P - 1
        x = torch.cat([prefix, caption], dim=1)  # (B, L, C)
        return x, (plugged("causal_mask") or causal_mask)(x.size(1), device=x.device)  # (L, L): the prefix causal too

    def caption_row(self, past):
        """The position-table row of the token after `past` positions: the prefix has rows of its own."""
        return past

    @property
    def max_caption(self):
        """The longest caption, start token included: the table holds the prefix's positions too, and the start
        token takes none."""
        return self.config.max_len - self.config.prefix_len + 1
