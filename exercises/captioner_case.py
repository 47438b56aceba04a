"""The last case of every exercise that has a place in the model: the captioner itself, with the student's
functions plugged in (model/hooks.py), must give the project's own outputs on every path it runs.

A small seeded captioner (a ViT and a decoder with cross-attention and dropout) runs each path once:
a training step (dropout on, rows of different lengths, the loss and every gradient), a first decoding
call and the cached steps after it (two tokens at once, then one), the attention weights the pictures
draw, greedy decoding, beam search, and sampling with top-k and top-p. A function that passes its own
cases but breaks one of these (a block that drops the cache or the dropout, a mask on the wrong device)
fails here, and the message names the path.
"""

import torch

from exercises.checker import Case, Mistake
from exercises.parts import PATHS, CachedStepFailed, failed_on, only
from exercises.plug import PLUGS
from model import DecodingOptions, ViTConfig, build_caption_model
from model.decoder import DecoderConfig
from model.hooks import plug

BOS, EOS = 1, 2


def small_captioner():
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, width=16, layers=1, heads=2, output_dim=16)
    decoder = DecoderConfig(max_len=12, width=16, layers=2, heads=2, mlp_ratio=2, prefix_len=2, dropout=0.3)
    return build_caption_model(vit, decoder, vocab_size=11)


def captioner_paths(hooks):
    """Run every path of the small captioner with `hooks` plugged in -> path -> tensor. An error on a path
    is raised again as PathFailed (CachedStepFailed on a cached step) naming the path."""
    out = {}
    try:
        run_paths(hooks, out)
    except Exception as error:  # noqa: BLE001 - said again with the path it happened on
        raise failed_on(next(name for name in PATHS if name not in out), error) from error
    return out


def run_paths(hooks, out):
    """captioner_paths' work: fills `out` path by path."""
    model = small_captioner()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 16, 16, generator=g)
    tokens = torch.randint(3, 11, (3, 7), generator=g)
    tokens[:, 0] = BOS
    lengths = torch.tensor([7, 4, 5])
    with plug(hooks):
        model.train()
        torch.manual_seed(2)  # the dropout masks
        logits = model(tokens, images=images, lengths=lengths).logits  # (B, T, V)
        real = torch.arange(6)[None, :] < (lengths - 1)[:, None]  # (B, T - 1) the positions with a next token
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][real], tokens[:, 1:][real])
        loss.backward()
        out["training_loss"] = loss.detach()
        out["training_gradients"] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.eval()
        with torch.no_grad():
            clip_embed, patches = model.encode(images)
            cache = model.decoder.new_cache()
            for name, part in (("first_call", tokens[:, :2]), ("cached_two", tokens[:, 2:4]),
                               ("cached_one", tokens[:, 4:5])):
                out[name] = model.decoder(part, clip_embed, patches, cache=cache).logits
            attn = model(tokens, images=images, return_attn=True)
            out["self_attention"] = torch.stack(attn.self_attn)
            out["cross_attention"] = torch.stack(attn.cross_attn)
            decode = lambda **o: model.generate(BOS, EOS, images=images, options=DecodingOptions(**o))[0]  # noqa: E731
            out["greedy"] = decode()
            out["beam"] = decode(beam=3)
            out["sampled"] = decode(temperature=1.0, top_k=6, top_p=0.9, seed=3)


def in_the_captioner(exercise):
    """The captioner case of `exercise`: every path above with the exercise's functions plugged in."""
    run = lambda functions, args: tuple(captioner_paths({h: functions[h] for h in PLUGS[exercise]}).values())  # noqa: E731
    # the paths in PATHS' order (captioner_paths fills them so)
    case = Case("the captioner with your code plugged in, on every path it runs", "*", lambda: (), tuple(PATHS.values()), run)
    return case, CAPTIONER_MISTAKES


CAPTIONER_MISTAKES = [  # the first that fits is named: the narrower ones first
    Mistake("the forward pass is right but the gradients differ: a .detach(), torch.no_grad() or an "
            "in-place change cuts or alters the gradient.", function="*", seen=only("training_gradients")),
    *(Mistake("your code is right on a first call but not on the cached steps after it: the KV cache must "
              "reach the attention (e.g. block.self_attn(..., cache=self_cache)), so later tokens see the "
              "keys and values of the earlier ones.", function="*", **found)
      for found in ({"seen": only("cached_two", "cached_one", "greedy", "beam", "sampled")},
                    {"raised": CachedStepFailed})),
    Mistake("your code is right in evaluation but not in training: dropout is missing or in another place. "
            "Each sublayer's output goes through the dropout before it is added: x = x + "
            "block.dropout(sublayer(norm(x))).", function="*", seen=only("training_loss", "training_gradients")),
]
