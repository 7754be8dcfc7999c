"""Straightforward reference implementations the tests check the library against.

They compute the same quantities as the library by another route (every patch instead of
the gathered ones; the timm modules instead of the config), so an equivalence test
between the two can fail. Test code only:
``ssl_zoo`` never calls them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_weights_from_masks(masks: Tensor) -> Tensor:
    """(B, N) bool masks -> (M,) weights 1 / (masked patches of its image), in the order of
    ``x[masks]`` (the collate's ``mask_weights`` gathered per patch)."""
    assert masks.ndim == 2 and masks.dtype == torch.bool, (masks.dtype, masks.shape)
    per_image = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1).float()  # (B, 1)
    return per_image.expand(masks.shape)[masks]


def ibot_patch_loss_dense(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOT on full (B, N, K) patch grids, the (B, N) mask selecting the terms (DINOv2's
    ``iBOTPatchLoss.forward``): every patch computed, then a per-image masked mean, then
    the mean over all B images. Equals ``ibot_patch_loss`` on the gathered patches."""
    assert (
        student_patch_logits.shape == teacher_patch_probs.shape
        and masks.shape == student_patch_logits.shape[:2]
    )
    with torch.autocast(device_type=student_patch_logits.device.type, enabled=False):
        log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
        ce = -(teacher_patch_probs.float() * log_p).sum(dim=-1)  # (B, N)
        m = masks.float()
        return ((ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()



# --- the official ViT forward (DINO / DINOv2), for official-layout state dicts -----------


def official_vit_state(width=384, depth=2, patch=16, grid=14, layer_scale=False, n_reg=0, mask_token=False,
                       swiglu_hidden=0, seed=0) -> dict[str, Tensor]:
    """Random weights under the keys and shapes of dino ``VisionTransformer`` (cls_token,
    pos_embed (1, 1 + grid^2, D), patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj,
    norm2, mlp.fc1, mlp.fc2}, norm) and, with ``layer_scale`` / ``n_reg`` / ``mask_token``
    / ``swiglu_hidden``, of dinov2 ``DinoVisionTransformer`` (blocks.N.ls1.gamma /
    ls2.gamma, register_tokens (1, R, D), mask_token (1, D), mlp.w12 / mlp.w3)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    sd = {"cls_token": rnd(1, 1, width, scale=0.5), "pos_embed": rnd(1, grid * grid + 1, width, scale=0.5)}
    if n_reg:
        sd["register_tokens"] = rnd(1, n_reg, width, scale=0.5)
    if mask_token:
        sd["mask_token"] = rnd(1, width)
    sd["patch_embed.proj.weight"] = rnd(width, 3, patch, patch)
    sd["patch_embed.proj.bias"] = rnd(width)
    for i in range(depth):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = 1 + rnd(width, scale=0.1), rnd(width, scale=0.1)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = rnd(3 * width, width, scale=0.05), rnd(3 * width)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rnd(width, width, scale=0.05), rnd(width)
        if layer_scale:
            sd[p + "ls1.gamma"] = 1 + rnd(width, scale=0.3)
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = 1 + rnd(width, scale=0.1), rnd(width, scale=0.1)
        if swiglu_hidden:
            sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"] = rnd(2 * swiglu_hidden, width, scale=0.05), rnd(2 * swiglu_hidden)
            sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"] = rnd(width, swiglu_hidden, scale=0.05), rnd(width)
        else:
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(4 * width, width, scale=0.05), rnd(4 * width)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(width, 4 * width, scale=0.05), rnd(width)
        if layer_scale:
            sd[p + "ls2.gamma"] = 1 + rnd(width, scale=0.3)
    sd["norm.weight"], sd["norm.bias"] = 1 + rnd(width, scale=0.1), rnd(width, scale=0.1)
    return sd


def official_positions(pos_embed: Tensor, h: int, w: int, image_hw: tuple[int, int], offset=0.1, antialias=False) -> Tensor:
    """``interpolate_pos_encoding`` re-derived (dino vision_transformer.py:174-194 at 7c446df;
    dinov2 models/vision_transformer.py:180-212 at b8931f7): (1, 1 + M*M, D) -> (1, 1 + h*w, D).

    - nothing changes when the image is square and has as many patches as stored (the
      official early-out compares the token count and the image sides in pixels);
    - else the M x M patch grid (row-major) is resampled in float32, bicubic
      (align_corners False), with ``scale_factor=((h + offset) / M, (w + offset) / M)``
      when ``offset`` (DINO: always 0.1; DINOv2: ``interpolate_offset``, 0.1 by default)
      and ``size=(h, w)`` when 0 (DINOv2 register releases), antialiased only with
      ``antialias`` (DINOv2 ``interpolate_antialias``); torch then maps output to input
      coordinates with that scale factor, so the offset changes the values;
    - the class position is kept in front.
    """
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    assert side * side == n, "the official models store a square grid"
    if h * w == n and image_hw[0] == image_hw[1]:
        return pos_embed
    dim = pos_embed.shape[-1]
    field = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        field = F.interpolate(field, scale_factor=((h + offset) / side, (w + offset) / side), mode="bicubic",
                              antialias=antialias)
    else:
        field = F.interpolate(field, size=(h, w), mode="bicubic", antialias=antialias)
    assert tuple(field.shape[-2:]) == (h, w)
    return torch.cat([pos_embed[:, :1], field.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1).to(pos_embed.dtype)


def official_vit_forward(sd: dict[str, Tensor], images: Tensor, patch: int, heads: int, offset=0.1, antialias=False,
                         masks: Tensor | None = None) -> dict[str, Tensor]:
    """The official ViT forward in plain torch from an official-layout state dict: {'cls':
    (B, D), 'patch': (B, h*w, D)} after the final norm.

    dino ``prepare_tokens`` / dinov2 ``prepare_tokens_with_masks``: conv patch embedding
    (kernel = stride = patch; row-major tokens), masked patches replaced by ``mask_token``
    (DINOv2), class token in front, + :func:`official_positions`, then the registers
    inserted after the class token (no positions). Blocks (dino Block / dinov2
    layers/block.py eval path): pre-norm LayerNorm(eps 1e-6), qkv attention with scale
    head_dim^-0.5, proj, layer scale ``ls1.gamma`` when present, residual; LayerNorm, MLP
    fc1 -> exact GELU -> fc2 (or SwiGLU: silu(x1) * x2 of ``w12``, then ``w3``), ``ls2``,
    residual. Final LayerNorm(eps 1e-6); cls = token 0, patches after the registers.
    """
    batch = images.shape[0]
    width = sd["cls_token"].shape[-1]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), sd["mask_token"].reshape(1, 1, width).to(x.dtype), x)
    x = torch.cat([sd["cls_token"].expand(batch, -1, -1), x], dim=1)
    x = x + official_positions(sd["pos_embed"], h, w, tuple(images.shape[-2:]), offset, antialias)
    n_reg = 0
    if "register_tokens" in sd:
        n_reg = sd["register_tokens"].shape[1]
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
    n = x.shape[1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(batch, n, width), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + (y * sd[p + "ls1.gamma"] if p + "ls1.gamma" in sd else y)
        y = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        if p + "mlp.w12.weight" in sd:
            x1, x2 = F.linear(y, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        else:
            y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + (y * sd[p + "ls2.gamma"] if p + "ls2.gamma" in sd else y)
    x = F.layer_norm(x, (width,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return {"cls": x[:, 0], "patch": x[:, 1 + n_reg :]}
