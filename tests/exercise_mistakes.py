"""Wrong solutions to the exercises, as students write them, each with the words its diagnosis must contain:
the data of tests/test_exercises.py (every mistake gets its diagnosis) and tests/test_pack.py (the student
pack's checker gives the project's verdicts)."""

# (exercise, the wrong function as a student might write it, words the diagnosis must contain)
MISTAKES = [
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1)
    return w @ v, w''', "not divided by sqrt(D)"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1)
    return w @ v, w''', "divided by D, not by sqrt(D)"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=2)
    return w @ v, w''', "softmax runs over the wrong axis"),
    ("attention", '''
def attention(q, k, v, mask=None):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    if mask is not None:
        w = w * mask
    return w @ v, w''', "mask is applied after the softmax"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores[mask.expand_as(scores)] = float("-inf")
    w = torch.softmax(scores, -1)
    return w @ v, w''', "mask is read the wrong way round"),
    ("masks", '''
def causal_mask(T, S=None):
    S = S or T
    return torch.triu(torch.ones(T, S), diagonal=1) * float("-inf")''', "the mask is not boolean"),
    ("masks", '''
def causal_mask(T, S=None):
    S = S or T
    return torch.ones(T, S, dtype=torch.bool).triu()''', "causal mask is upside down"),
    ("masks", '''
def causal_mask(T, S=None):
    S = S or T
    return torch.ones(T, S, dtype=torch.bool).tril(-1 + S - T)''', "a position cannot see itself"),
    ("masks", '''
def causal_mask(T, S=None):
    S = S or T
    return torch.arange(S)[None, :] <= torch.arange(T)[:, None]''', "the LAST T positions"),
    ("masks", '''
def padding_mask(lengths, S):
    return torch.arange(S)[None, :] < lengths[:, None]''', "shape (B, 1, 1, S)"),
    ("masks", '''
def padding_mask(lengths, S):
    return (torch.arange(S)[None, :] >= lengths[:, None])[:, None, None, :]''', "padding mask is the wrong way"),
    ("heads", '''
def split_heads(x, heads):
    B, T, C = x.shape
    return x.view(B, heads, T, C // heads)''', "reshaped without transposing"),
    ("heads", '''
def merge_heads(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)''', "merged without transposing back"),
    ("heads", '''
def split_heads(x, heads):
    B, T, C = x.shape
    return x.view(B, T, C // heads, heads).permute(0, 3, 1, 2)''', "wrong order"),
    ("patches", '''
def patch_embedding(images, weight, p):
    B, _, S, _ = images.shape
    g = S // p
    x = images.view(B, 3, g, p, g, p).permute(0, 4, 2, 1, 3, 5).reshape(B, g * g, -1)
    return x @ weight.flatten(1).T''', "column by column"),
    ("patches", '''
def patch_embedding(images, weight, p):
    B, _, S, _ = images.shape
    g = S // p
    x = images.view(B, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, -1)
    return x @ weight.flatten(1).T''', "flattened channel-last"),
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    x = block.ln_1(x + block.self_attn(x, mask=mask)[0])
    x = block.ln_2(x + block.cross_attn(x, memory, memory_mask)[0])
    x = block.ln_3(x + block.mlp(x))
    return x, None, None''', "post-norm"),
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    x = block.ln_1(x)
    x = x + block.self_attn(x, mask=mask)[0]
    x = block.ln_2(x)
    x = x + block.cross_attn(x, memory, memory_mask)[0]
    x = block.ln_3(x)
    x = x + block.mlp(x)
    return x, None, None''', "residual adds to the normalised x"),
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    x = x + block.self_attn(block.ln_1(x), mask=mask)[0]
    x = x + block.mlp(block.ln_3(x))
    return x, None, None''', "cross-attention step is missing"),
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    x = block.self_attn(block.ln_1(x), mask=mask)[0]
    x = x + block.cross_attn(block.ln_2(x), memory, memory_mask)[0]
    x = x + block.mlp(block.ln_3(x))
    return x, None, None''', "replaces x instead of being added"),
    ("prefix", '''
def prefix_lm_mask(P, T):
    mask = torch.ones(P + T, P + T).tril()
    mask[:, :P] = 1
    return mask''', "the mask is not boolean"),
    ("prefix", '''
def prefix_lm_mask(P, T):
    return torch.ones(P + T, P + T, dtype=torch.bool).tril()''', "the prefix is causal"),
    ("prefix", '''
def prefix_lm_mask(P, T):
    mask = torch.ones(P + T, P + T, dtype=torch.bool).tril()
    mask[:P, :] = True
    mask[:, :P] = True
    return mask''', "prefix positions can see the caption"),
    ("prefix", '''
def prefix_lm_mask(P, T):
    mask = torch.zeros(P + T, P + T, dtype=torch.bool)
    mask[:, :P] = True
    mask[P:, P:] = True
    return mask''', "caption is not causal"),
    ("cache", '''
def cached_attention(q, k, v, past=None):
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    T, S = q.size(2), k.size(2)
    mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v, (k[:, :, -1:], v[:, :, -1:]) if past is None else (k, v)''', "forgets the prompt"),
    ("cache", '''
def cached_attention(q, k, v, past=None):
    k_all = k if past is None else torch.cat([past[0], k], dim=2)
    v_all = v if past is None else torch.cat([past[1], v], dim=2)
    T, S = q.size(2), k_all.size(2)
    mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
    w = (q @ k_all.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v_all, (k, v)''', "keeps only the newest step"),
    ("cache", '''
def cached_attention(q, k, v, past=None):
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1)
    return w @ v, (k, v)''', "causal_mask(T, S)"),
    ("cache", '''
def cached_attention(q, k, v, past=None):
    T = q.size(2)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v, None''', "the cache returned is empty"),
    ("filters", '''
def top_k_filter(logits, k):
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))''', "min(k, V)"),
    ("filters", '''
def top_k_filter(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, 0.0)''', "not to 0"),
    ("filters", '''
def top_k_filter(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf")).softmax(-1)''', "returns probabilities"),
    ("filters", '''
def top_k_filter(logits, k):
    kth = torch.sort(logits, descending=True).values[:, min(k, logits.size(-1)) - 1 : min(k, logits.size(-1))]
    return torch.where(logits > kth, logits, torch.full_like(logits, float("-inf")))''', "keeps k - 1"),
    ("filters", '''
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    keep_sorted = probs.cumsum(-1) - probs < p
    keep = torch.zeros_like(keep_sorted)
    keep[:, order[0]] = keep_sorted
    return logits.masked_fill(~keep, float("-inf"))''', "another row's sorting order"),
    ("filters", '''
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    keep_sorted = sorted_logits.softmax(-1).cumsum(-1) <= p
    keep = keep_sorted.gather(-1, order.argsort(-1))
    return logits.masked_fill(~keep, float("-inf"))''', "keeps too few tokens"),
    ("filters", '''
def top_p_filter(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))''', "vocabulary order"),
    ("beam", '''
def best_beams(scores, K):
    B, K_in, V = scores.shape
    best = scores.reshape(B, -1).topk(K, dim=-1).indices
    return best / V, best % V''', "true division"),
    ("beam", '''
def best_beams(scores, K):
    token = scores.argmax(-1)
    return torch.arange(scores.size(1)).repeat(scores.size(0), 1), token''', "chose within each beam"),
    ("beam", '''
def best_beams(scores, K):
    B, K_in, V = scores.shape
    best = scores.reshape(B, -1).topk(K, dim=-1).indices
    return best % V, best // V''', "beam and token are swapped"),
    ("beam", '''
def best_beams(scores, K):
    B, K_in, V = scores.shape
    best = scores.reshape(B, -1).topk(K, dim=-1).indices
    return best % K_in, best // K_in''', "decoded with the wrong size"),
    # found only in the captioner (the last case): right on the block's own cases, wrong in the model
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    a, self_w = block.self_attn(block.ln_1(x), mask=mask, return_attn=return_attn)
    x = x + block.dropout(a)
    a, cross_w = block.cross_attn(block.ln_2(x), memory, memory_mask, return_attn=return_attn)
    x = x + block.dropout(a)
    return x + block.dropout(block.mlp(block.ln_3(x))), self_w, cross_w''', "not on the cached steps"),
    ("block", '''
def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    self_cache, cross_cache = cache if cache is not None else (None, None)
    a, self_w = block.self_attn(block.ln_1(x), mask=mask, cache=self_cache, return_attn=return_attn)
    x = x + a
    a, cross_w = block.cross_attn(block.ln_2(x), memory, memory_mask, cross_cache, return_attn)
    x = x + a
    return x + block.mlp(block.ln_3(x)), self_w, cross_w''', "right in evaluation but not in training"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1).detach()
    return w @ v, w''', "the gradients differ"),
]
