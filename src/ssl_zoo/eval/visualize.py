"""Pictures of what a backbone sees, as in the DINO and DINOv2 papers.

- Attention (DINO, Caron et al. 2021, fig. 1 and 3): the last block's attention from the
  class token to every patch, one map per head. timm ViTs compute attention with a fused
  kernel that never materialises the weights, so a forward pre-hook on the last block's
  attention module captures its input (the normalised tokens) and the weights are
  recomputed from that module's own ``qkv`` projection and q/k norms: no fork of timm.
- PCA of patch features (DINOv2, Oquab et al. 2023, fig. 1): one PCA over the patches of
  all the given images together; its first component, thresholded, separates foreground
  from background; a PCA refit on the foreground patches gives three components shown as
  RGB (refit so that the background's variance does not use up the colours). Works for
  CNNs too, on the last feature map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


class VizError(ValueError):
    """The backbone or input cannot give the asked picture; the message says why."""


def _patch_grid(backbone, images: torch.Tensor) -> tuple[int, int]:
    patch = backbone.patch_size
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise VizError(f"image size {height}x{width} is not a multiple of the patch size {patch}: use size=<multiple of {patch}>")
    return height // patch, width // patch


def _require_attention(backbone) -> None:
    blocks = getattr(backbone.model, "blocks", None)
    if not backbone.has_patch_tokens or blocks is None or len(blocks) == 0:
        raise VizError(
            f"backbone {backbone.model_name} has no attention (a CNN): attention maps need a ViT "
            "backbone; the PCA map works for both"
        )


@torch.no_grad()
def last_block_attention(backbone, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """((B, heads, T, T) softmax attention weights of the last block, all T tokens
    including the class and register tokens; the backbone's usual output)."""
    _require_attention(backbone)
    attn = getattr(backbone.model.blocks[-1], "attn", None)
    if attn is None or not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")):
        raise VizError(
            f"backbone {backbone.model_name}: the last block's attention ({type(attn).__name__}) is not "
            "timm's standard Attention (qkv, num_heads, scale); its weights cannot be recomputed"
        )
    captured: dict[str, torch.Tensor] = {}

    def grab_input(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["x"]

    handle = attn.register_forward_pre_hook(grab_input, with_kwargs=True)
    try:
        output = backbone(images)
    finally:
        handle.remove()
    x = captured["x"]
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    # Same order of operations as timm's unfused path (scale q first), so the weights match.
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
    return weights, output


@torch.no_grad()
def cls_attention_maps(backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, h, w): last-block attention of the class token to each patch (the
    prefix tokens, class and registers, are left out, so a map sums to 1 minus their share)."""
    _require_attention(backbone)
    if getattr(backbone.model, "cls_token", None) is None:
        raise VizError(f"backbone {backbone.model_name} has no class token: there is no CLS attention to show")
    grid = _patch_grid(backbone, images)
    weights, _ = last_block_attention(backbone, images)
    cls_row = weights[:, :, 0, backbone.num_prefix_tokens :]
    return cls_row.reshape(*cls_row.shape[:2], *grid)


@torch.no_grad()
def patch_feature_maps(backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, h, w, D) patch features: ViT patch tokens after the final norm; for a CNN the
    last feature map."""
    if backbone.has_patch_tokens:
        grid = _patch_grid(backbone, images)
        patch = backbone(images)["patch"]
        return patch.reshape(patch.shape[0], *grid, patch.shape[-1]).float()
    # Called past Backbone.forward, so past FSDP2's cast of the inputs to its compute dtype.
    maps = backbone.model.forward_features(images.to(next(backbone.model.parameters()).dtype))
    if maps.dim() != 4:
        raise VizError(f"backbone {backbone.model_name}: expected a (B, C, h, w) feature map, got shape {tuple(maps.shape)}")
    return maps.permute(0, 2, 3, 1).float()


def _components(x: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n) projections of centred rows of x on their first n principal axes."""
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    n = min(n, vh.shape[0])
    return x @ vh[:n].T


def pca_maps(features: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb (B, h, w, 3) in [0, 1], foreground (B, h, w) bool) from (B, h, w, D) features.

    threshold: on the first component in units of its std; patches above it are the
    foreground. The first component's sign is arbitrary, so it is turned such that the
    image borders, usually background, are mostly below the mean.
    """
    batch, h, w, dim = features.shape
    flat = features.reshape(-1, dim).double()  # fp64: tiny maps of near-identical features
    first = _components(flat, 1)[:, 0].reshape(batch, h, w)
    border = torch.ones(h, w, dtype=torch.bool)
    if h > 2 and w > 2:
        border[1:-1, 1:-1] = False
    if first[:, border].mean() > 0:
        first = -first
    foreground = first / first.std().clamp_min(1e-12) > threshold
    if foreground.sum() < 3:  # nothing stands out: show every patch rather than none
        foreground = torch.ones_like(foreground)
    rgb = torch.zeros(batch, h, w, 3, dtype=torch.float64)
    comps = _components(flat[foreground.flatten()], 3)
    low, high = comps.min(0).values, comps.max(0).values
    comps = (comps - low) / (high - low).clamp_min(1e-12)
    rgb[foreground, : comps.shape[1]] = comps
    return rgb.float(), foreground


def denormalize(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, H, W, 3) float in [0, 1] for display."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def pictures(backbone, images: torch.Tensor, attention: bool = True, threshold: float = 0.0) -> dict[str, Any]:
    """{"attention": (B, heads, h, w) or None, "pca": (B, h, w, 3), "foreground"} for a
    batch of eval-transformed images (PCA over all of them together)."""
    # Each module's own mode back afterwards, not one flag for all: a DINO teacher is in
    # eval mode with its BatchNorm in training mode (ssl_zoo.models.ema.set_teacher_mode).
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        heads = cls_attention_maps(backbone, images) if attention else None
        rgb, foreground = pca_maps(patch_feature_maps(backbone, images), threshold)
    finally:
        for module, training in modes:
            module.training = training
    return {"attention": heads, "pca": rgb, "foreground": foreground}


def draw_rows(path: Path, images: np.ndarray, attention: torch.Tensor | None, pca: torch.Tensor,
              titles: list[str] | None = None, dpi: int = 80) -> Path:
    """One row per image: the image, each head's attention map, the PCA map (maps drawn
    over the image's extent, nearest-neighbour, so a patch stays a visible square)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n_rows = images.shape[0]
    n_heads = 0 if attention is None else attention.shape[1]
    n_cols = 2 + n_heads
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.5 * n_cols, 1.5 * n_rows + 0.3), squeeze=False)
    for r in range(n_rows):
        panels = [(images[r], titles[r] if titles else "image")]
        for head in range(n_heads):
            panels.append((attention[r, head].cpu().numpy(), f"head {head}"))
        panels.append((pca[r].cpu().numpy(), "PCA"))
        for c, (panel, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest", cmap="inferno" if panel.ndim == 2 else None)
            ax.set_axis_off()
            if r == 0 or (c == 0 and titles):
                ax.set_title(title, fontsize=7)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
