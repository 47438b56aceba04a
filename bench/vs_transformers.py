"""Our decoder and sampler against Hugging Face's GPT-2 with cross-attention and its generate().

    pip install -r requirements-dev.txt   # transformers: a test and bench dependency only
    python -m bench.vs_transformers [--repeats 5] [--device auto]

What a user would pick instead of our sampler is `transformers`' `generate()` on a GPT-2 decoder
with cross-attention (the VisionEncoderDecoder route). Both decoders here are 6 layers, 512 wide,
8 heads, MLP 4 x 512, the same 7,440-word vocabulary, random weights, no dropout, tied output head,
PyTorch's scaled-dot-product attention. Both read the same 49 image tokens of width 512 (GPT-2 as
`encoder_hidden_states`, ours through its patch projection), and both run 10 prefix positions before
the caption: ours from its ClipCap mapper, GPT-2's as `inputs_embeds` (ClipCap's way with GPT-2), so
both attend over sequences of the same length. (Ours has 14.7 M more parameters, in the prefix
mapper, which runs once per caption.)

Decoding: greedy and beam 3, batch 1 and 32, KV cache on both, every caption forced to 20 new tokens
(no end token can stop a row). Training: one step (forward, cross-entropy, backward, AdamW) at
batch 64 with 32 caption tokens. Runs alternate between ours and theirs; medians are reported.

--compile adds a third decoder to the decoding rows: ours in model/compiled.py's CompiledDecoder (fixed-length caches, each
step through torch.compile), compiled in the untimed warm-up run of each row.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from captioner.cli import pick_device
from model.compiled import CompiledDecoder
from model.decoder import CaptionDecoder, DecoderConfig
from model.sampling import beam_search, sample

V, WIDTH, LAYERS, HEADS, PATCHES, PREFIX, NEW_TOKENS, BOS = 7440, 512, 6, 8, 49, 10, 20, 1
NEVER = -1  # an end-token id no row can produce: every caption runs to NEW_TOKENS


def build(device, dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ours = CaptionDecoder(DecoderConfig(vocab_size=V, width=WIDTH, layers=LAYERS, heads=HEADS, max_len=40, prefix_len=PREFIX,
                                        clip_dim=WIDTH, patch_dim=WIDTH, dropout=0.0))
    config = GPT2Config(vocab_size=V, n_positions=64, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                        add_cross_attention=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=BOS, eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
    theirs = GPT2LMHeadModel(config)
    return ours.to(device, dtype).eval(), theirs.to(device, dtype).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def decoding_runs(ours, theirs, batch, beams, device, dtype, compiled=None):
    clip_embed = torch.randn(batch, WIDTH, device=device, dtype=dtype)
    image = torch.randn(batch, PATCHES, WIDTH, device=device, dtype=dtype)
    start = torch.full((batch, 1), BOS, device=device)
    prefix = torch.randn(batch, PREFIX, WIDTH, device=device, dtype=dtype)  # GPT-2's prefix positions
    embeds = torch.cat([prefix, theirs.transformer.wte(start)], dim=1)  # (B, PREFIX + 1, WIDTH)
    attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
    common = dict(bos_id=BOS, eos_id=NEVER, max_new_tokens=NEW_TOKENS)
    def ours_on(decoder):
        if beams == 1:
            return lambda: sample(decoder, clip_embed, image, **common)
        return lambda: beam_search(decoder, clip_embed, image, beam_size=beams, **common)

    def run_theirs():
        return theirs.generate(inputs_embeds=embeds, attention_mask=attention_mask, encoder_hidden_states=image,
                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                               num_beams=beams, use_cache=True, eos_token_id=None, pad_token_id=0)
    runs = {"ours": ours_on(ours), "theirs": run_theirs}
    return runs if compiled is None else {**runs, "compiled": ours_on(compiled)}


def training_runs(ours, theirs, device, dtype, batch=64, length=32):
    tokens = torch.randint(0, V, (batch, length), device=device)
    clip_embed = torch.randn(batch, WIDTH, device=device, dtype=dtype)
    image = torch.randn(batch, PATCHES, WIDTH, device=device, dtype=dtype)
    prefix = torch.randn(batch, PREFIX, WIDTH, device=device, dtype=dtype)  # GPT-2's prefix positions
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, theirs)]

    def theirs_logits():
        embeds = torch.cat([prefix, theirs.transformer.wte(tokens)], dim=1)  # (B, PREFIX + T, WIDTH)
        return theirs(inputs_embeds=embeds, encoder_hidden_states=image).logits[:, PREFIX:]

    def step(model, optimizer, logits_of):
        model.train()
        logits = logits_of()  # (B, T, V), position t predicts token t + 1
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()

    def run_ours():
        step(ours, optimizers[0], lambda: ours(tokens, clip_embed, image).logits)

    def run_theirs():
        step(theirs, optimizers[1], theirs_logits)
    return {"ours": run_ours, "theirs": run_theirs}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each row, alternating (median reported)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and activations; bfloat16 is for GPUs")
    p.add_argument("--compile", action="store_true", help="also time our decoder with compiled steps (model/compiled.py)")
    args = p.parse_args()
    import transformers

    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    ours, theirs = build(device, dtype)
    compiled = None
    if args.compile:
        twin = CaptionDecoder(ours.config).to(device, dtype).eval()  # CompiledDecoder makes its attention written out
        twin.load_state_dict(ours.state_dict())
        compiled = CompiledDecoder(twin)
    rows = [(f"{'greedy' if beams == 1 else f'beam {beams}'}, batch {batch}", batch,
             lambda b=batch, k=beams: decoding_runs(ours, theirs, b, k, device, dtype, compiled))
            for beams in (1, 3) for batch in (1, 32)]
    rows.append(("training step, batch 64", 64, lambda: training_runs(ours, theirs, device, dtype)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{name}, {args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"median of {args.repeats}")
    print(f"{'':26} {'ours (captions/s)':>18} {'transformers':>13} {'ours / theirs':>14}"
          + (f" {'compiled':>9} {'compiled / theirs':>18}" if compiled else ""))
    for label, batch, make in rows:
        runs = make()
        grad = torch.enable_grad() if label.startswith("training") else torch.no_grad()
        with grad:
            made = {k: run() for k, run in runs.items()}  # warm-up (and compiling), and a check of the shapes
            if not label.startswith("training"):
                shapes = {(x[0] if isinstance(x, tuple) else x).shape for x in made.values()}
                assert shapes == {(batch, NEW_TOKENS)}, shapes
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, run in runs.items():
                    times[k].append(timed(run, device))
        rate = {k: batch / statistics.median(t) for k, t in times.items()}
        line = f"{label:26} {rate['ours']:18.1f} {rate['theirs']:13.1f} {rate['ours'] / rate['theirs']:13.2f}x"
        if "compiled" in rate:
            line += f" {rate['compiled']:9.1f} {rate['compiled'] / rate['theirs']:17.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
