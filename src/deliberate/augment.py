"""Per-image crops and flips of a training batch, drawn for the whole global batch.

Both take `part` = (global batch size, this rank's rows): the random draws cover the global
batch and each rank keeps its rows, so under torchrun every image gets the crop a one-process
run would give it. They use the global CPU RNG, which the trainer seeds per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor, pad: int = 2, part: tuple[int, slice] | None = None
) -> torch.Tensor:
    """Per-image random crop from a zero-padded copy plus a horizontal flip (global RNG).

    `part` = (global batch size, rows of x in it): the draws are made for the whole global batch,
    so every image gets the crop it would get in a one-process run.
    """
    b, c, h, w = x.shape
    total, mine = part or (b, slice(None))
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * pad + 1, (total, 1))[mine]
    dx = torch.randint(0, 2 * pad + 1, (total, 1))[mine]
    flip = (torch.rand(total, 1) < 0.5)[mine]
    rows = dy + torch.arange(h)  # (B, H)
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))  # (B, W)
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    idx = (bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w))
    return padded[tuple(i.to(x.device) for i in idx)]  # (B, C, H, W)


def random_resized_crop_flip(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    part: tuple[int, slice] | None = None,
) -> torch.Tensor:
    """Per-image RandomResizedCrop (torchvision's sampling) plus a horizontal flip (global RNG).

    Each image gets a box of `scale` of its area and aspect in `ratio` (log-uniform), drawn up
    to 10 times and else the whole image, resized back to (H, W) bilinearly in one batched
    `torchvision.ops.roi_align`. As in `random_crop_flip`, the draws cover the whole global batch (`part`).
    """
    from torchvision.ops import roi_align

    b, c, h, w = x.shape
    total, mine = part or (b, slice(None))
    tries = 10
    area = h * w * torch.empty(total, tries).uniform_(*scale)
    log_r = torch.empty(total, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).round()
    ch = torch.sqrt(area / aspect).round()
    ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((total,), -1))
    pick = first.clamp_min(0).unsqueeze(1)
    cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], torch.full((total,), float(w)))
    ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], torch.full((total,), float(h)))
    x0 = torch.floor(torch.rand(total) * (w - cw + 1))
    y0 = torch.floor(torch.rand(total) * (h - ch + 1))
    flip = torch.rand(total) < 0.5
    boxes = torch.stack([x0, y0, x0 + cw, y0 + ch], 1)[mine]  # (B, 4): pixel i spans [i, i+1)
    rois = torch.cat([torch.arange(b, dtype=boxes.dtype).unsqueeze(1), boxes], 1)
    # One bilinear sample per output pixel at its centre: the whole-image box is the identity.
    out = roi_align(x, rois.to(x.device, x.dtype), output_size=(h, w), sampling_ratio=1,
                    aligned=True)  # fmt: skip
    return torch.where(flip[mine].to(x.device).view(-1, 1, 1, 1), out.flip(-1), out)
