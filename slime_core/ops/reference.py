"""Plain-PyTorch references of the fused ops: readable, slow, used by the tests and the
benchmarks as the ground truth the kernels are checked against."""
import torch


# ---- tile_resize ----

def tile_resize_ref(image, plan, filter="bicubic", mean=None, std=None, dtype=torch.uint8):
    """SliME's crops of one image as its released pipeline makes them, with Pillow: global view
    (plain resize to S x S), then resize-and-pad on black and S x S tiles row-major.

    image: uint8 (H, W, 3) numpy array or tensor; plan: slime_core.preprocess.Plan.
    Returns (n_crops, 3, S, S): uint8, or for a float dtype (x / 255 - mean) / std computed in
    float32 then rounded to dtype."""
    import numpy as np
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filter]
    S = plan.tile_size
    im = Image.fromarray(np.asarray(image), "RGB")
    crops = []
    if plan.global_view:
        crops.append(np.asarray(im.resize((S, S), resample)))
    if plan.grid_w:
        canvas = Image.new("RGB", plan.canvas, (0, 0, 0))
        canvas.paste(im.resize((plan.new_w, plan.new_h), resample), (plan.off_x, plan.off_y))
        for ty in range(plan.grid_h):
            for tx in range(plan.grid_w):
                crops.append(np.asarray(canvas.crop((tx * S, ty * S, (tx + 1) * S, (ty + 1) * S))))
    out = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    if dtype == torch.uint8:
        return out
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((out.to(torch.float32) / 255.0 - m) / s).to(dtype)


# ---- token_select ----
# Two references: the released SliME selection transcribed literally (an M x T cosine matrix,
# one image at a time), and a fast batched reference of the op's documented semantics.

def token_select_literal(x, e, mask, top_p, *, temperature=1.0, prenorm_temperature=0.5,
                         noise=None):
    """SliME's TextGuidedRouterCosine + TextGuidedSampler.forward, step for step.

    x (M, H) local tokens, e (T, H) text embeddings, mask (T,) (nonzero = a real text token,
    or None: the released code then averages instead of summing), noise (M,) or None (the
    released code draws randn * 0.1 here in training). Returns (kept indices ascending (K,)
    int64, probabilities (M,)). The released sampler softmaxes at temperature 0.5 before the
    noise (prenorm_temperature=0.5); prenorm_temperature=None skips that step. Computes in
    the inputs' dtype, as the released code does: upcast the inputs to float64 for ground
    truth. The cosine matrix costs M * T * H memory."""
    import torch.nn.functional as F

    similarity_matrix = F.cosine_similarity(x.unsqueeze(1), e.unsqueeze(0), dim=-1)
    if mask is not None:
        attn_mask = mask == False  # noqa: E712  (the released code's spelling)
        similarity_matrix = similarity_matrix.masked_fill(attn_mask.unsqueeze(0), float(0))
        similarity_matrix = similarity_matrix.sum(dim=-1)
    else:
        similarity_matrix = similarity_matrix.mean(dim=-1)
    local_probs = similarity_matrix
    if prenorm_temperature is not None:
        local_probs = F.softmax(local_probs / prenorm_temperature, dim=-1)
    if noise is not None:
        local_probs = local_probs + noise
    local_probs = F.softmax(local_probs / temperature, dim=-1)
    sorted_probs, sorted_indices = torch.sort(local_probs, descending=True)
    cumulative_probs = torch.cumsum(sorted_probs, dim=0)
    selected_indices = (cumulative_probs <= top_p).nonzero(as_tuple=True)[0]
    if selected_indices.numel() < sorted_indices.numel():
        selected_indices = sorted_indices[:selected_indices.numel() + 1]
    selected_indices, _ = selected_indices.sort(descending=False)
    return selected_indices, local_probs


def token_select_ref(tokens, text, text_mask, token_counts, *, top_p=None, top_k=None,
                     temperature=1.0, prenorm_temperature=None, noise=None,
                     compute_dtype=torch.float64):
    """The op's semantics in plain PyTorch, batched over padded inputs, O(M*H + T*H).

    tokens (B, M, H), text (B, T, H), text_mask (B, T) bool, token_counts (B,), noise (B, M)
    or None. Returns (indices (B, M) int64 ascending then -1, counts (B,) int64,
    probs (B, M) float32 with 0 on padding), ranking by (p desc, index asc) with a stable
    sort. compute_dtype float64 gives ground truth; float32 mirrors the kernels."""
    B, M, _ = tokens.shape
    x = tokens.to(compute_dtype)
    e = text.to(compute_dtype)
    eps = 1e-8
    e_unit = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = (e_unit * text_mask.unsqueeze(-1).to(compute_dtype)).sum(dim=1)  # (B, H)
    scores = torch.einsum("bmh,bh->bm", x, s) / x.norm(dim=-1).clamp_min(eps)
    indices = torch.full((B, M), -1, dtype=torch.int64, device=tokens.device)
    counts = torch.zeros(B, dtype=torch.int64, device=tokens.device)
    probs = torch.zeros(B, M, dtype=torch.float32, device=tokens.device)
    for b in range(B):
        n_tok = int(token_counts[b])
        q = scores[b, :n_tok]
        if prenorm_temperature is not None:
            q = torch.softmax(q / prenorm_temperature, dim=0)
        if noise is not None:
            q = q + noise[b, :n_tok].to(compute_dtype)
        p = torch.softmax(q / temperature, dim=0).float()
        probs[b, :n_tok] = p
        order = torch.sort(p, descending=True, stable=True).indices
        if top_k is not None:
            keep = min(top_k, n_tok)
        elif top_p >= 1.0:
            keep = n_tok
        else:
            c = torch.cumsum(p[order].double(), dim=0)
            n = int((c <= top_p).sum())
            keep = n_tok if n >= n_tok else n + 1
        kept = order[:keep].sort().values
        indices[b, :keep] = kept
        counts[b] = keep
    return indices, counts, probs
