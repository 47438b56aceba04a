"""CLIPScore and RefCLIPScore (Hessel et al. 2021): how well a caption fits its image in an OpenCLIP model's
joint space, without references, and its harmonic mean with the caption's nearest reference.

As the authors' clipscore.py computes them: every text is prefixed "A photo depicts ", image and text
embeddings are L2-normalised, CLIPScore = 2.5 * max(cos(image, caption), 0) per image, the text side of
RefCLIPScore is the largest cos(caption, reference), and RefCLIPScore their harmonic mean; each the mean
over images. The authors used OpenAI's ViT-B/32 ("ViT-B-32", "openai" in OpenCLIP), downloaded on first
use: evaluate.py does so only when asked (--clipscore)."""

import torch

PREFIX = "A photo depicts "
W = 2.5


@torch.no_grad()
def clip_scores(images, candidates, references=None, model_name="ViT-B-32", pretrained="openai", device="cpu",
                batch_size=64):
    """{"CLIPScore": mean, "RefCLIPScore": mean (with references)} of PIL images and one caption each."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    def texts(strings):
        chunks = [tokenizer([PREFIX + s for s in strings[i : i + batch_size]]) for i in range(0, len(strings), batch_size)]
        return unit(torch.cat([model.encode_text(chunk.to(device)) for chunk in chunks]).float())

    pictures = unit(torch.cat([model.encode_image(torch.stack([preprocess(p) for p in images[i : i + batch_size]])
                                                  .to(device)) for i in range(0, len(images), batch_size)]).float())
    captions = texts(candidates)  # (B, E)
    per_image = W * (pictures * captions).sum(-1).clamp(min=0)  # (B,)
    scores = {"CLIPScore": float(per_image.mean())}
    if references is not None:
        flat = texts([r for refs in references for r in refs])  # (R, E)
        owner = torch.tensor([b for b, refs in enumerate(references) for _ in refs])
        sims = captions @ flat.T  # (B, R)
        nearest = sims.masked_fill(owner[None, :] != torch.arange(len(references))[:, None], float("-inf")).amax(-1)
        total = per_image + nearest
        harmonic = torch.where(total != 0, 2 * per_image * nearest / total, torch.zeros_like(total))
        scores["RefCLIPScore"] = float(harmonic.mean())
    return scores
