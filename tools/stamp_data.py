"""Object photos pasted on backgrounds: many distinct unlabelled images for calibrating and distilling
a CNN when only a few real photos may be used (issue 21). The stamps come from
``python tools/fetch_stamps.py`` (Debian's tuxpaint-stamps-default: cut-out photographs with an
alpha channel); the backgrounds are whatever the caller passes, e.g. crops of its calibration photos,
so no held-out photo leaks into training.

- ``stamps(size=224)``: every fetched stamp as a (4, h, w) float tensor in 0..1 (RGB + alpha), the
  longer side at most ``size``; stamps under 24 px on a side are left out.
- ``composites(stamps, backgrounds, n, mean, std, seed)``: ``n`` seeded images: a random stamp scaled
  to 40-95% of the shorter side, flipped half the time, at a random place on a random background; the
  backgrounds and the result are in the model's normalised space ((pixel - mean) / std).
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from vision_data import VisionDataMissing, vision_dir


@lru_cache(maxsize=2)
def stamps(size: int = 224) -> tuple[torch.Tensor, ...]:
    index = vision_dir() / "stamps.json"
    if not index.is_file():
        raise VisionDataMissing(f"no {index}: run `python tools/fetch_stamps.py` (Debian's tuxpaint-stamps-default, "
                                "161 MB)")
    out = []
    for name in json.loads(index.read_text())["stamps"]:
        im = Image.open(vision_dir() / "stamps" / name).convert("RGBA")
        im.thumbnail((size, size))
        if min(im.size) >= 24:
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1).contiguous())
    return tuple(out)


def composites(pool, backgrounds: torch.Tensor, n: int, mean, std, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    height, width = backgrounds.shape[-2:]
    out = []
    for _ in range(n):
        st = pool[int(torch.randint(len(pool), (1,), generator=g))]
        img = backgrounds[int(torch.randint(len(backgrounds), (1,), generator=g))].clone()
        scale = float(torch.empty(1).uniform_(0.4, 0.95, generator=g)) * min(height, width) / max(st.shape[1:])
        h, w = max(8, int(st.shape[1] * scale)), max(8, int(st.shape[2] * scale))
        st = F.interpolate(st[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        if bool(torch.rand(1, generator=g) < 0.5):
            st = st.flip(-1)
        top = int(torch.randint(0, height - h + 1, (1,), generator=g))
        left = int(torch.randint(0, width - w + 1, (1,), generator=g))
        alpha, region = st[3:], img[:, top:top + h, left:left + w]
        img[:, top:top + h, left:left + w] = alpha * (st[:3] - m) / s + (1 - alpha) * region
        out.append(img)
    return torch.stack(out)
