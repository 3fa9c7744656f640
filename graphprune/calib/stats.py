"""Running statistics of a site's input: bounded memory, never stored activations.

Per input channel: count, sum and sum of squares (what activation and fluctuation
criteria need). Where a refit or a reconstruction-aware score needs it, the Gram
matrix of the site's input *features* (a linear's input channels; a convolution's
unfolded patches), augmented with a constant 1 so that a bias is one more column.
Compensation also accumulates the cross Gram between the original model's input
and the pruned model's input at the same site, batch by batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import distributed
from . import sites as _sites
from .sites import Site


def real_rows(site: Site, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
    """Which rows of a linear site's samples are real tokens: ``valid`` is the batch's
    attention mask (batch, seq); padding would otherwise dominate short sentences' statistics.
    The input is (batch, seq, channels), or (batch * seq, channels) where the model flattens
    the tokens before an addmm (GPT-2's Conv1D): rows in the mask's row-major order."""
    if valid is None or site.kind != "linear":
        return None
    lead = tuple(x.shape[:-1])
    if lead != tuple(valid.shape) and lead != (valid.numel(),):
        return None
    return valid.reshape(-1).bool().to(x.device)


def channels(site: Site, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(samples, channels): every position of every batch item is a sample."""
    x = x.detach().to(torch.float32)
    c = x.movedim(site.x_dim, -1).reshape(-1, x.shape[site.x_dim])
    return c if rows is None else c[rows]


def refittable(site: Site) -> bool:
    """Sites with a feature view: linears and ungrouped 1-D, 2-D and 3-D convolutions."""
    return site.kind == "linear" or (site.groups == 1 and len(site.kernel) in (1, 2, 3))


def features(site: Site, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """(samples, features + 1): the inputs a refit sees, with a trailing constant 1.

    A linear's features are its input channels. An ungrouped 1-D/2-D/3-D convolution's are
    its unfolded patches (channel-major, kernel positions inner), so a 1x1 conv is a
    linear over channels. Other convolutions have no feature view (None).
    """
    x = x.detach().to(torch.float32)
    if site.kind == "linear":
        f = x.reshape(-1, x.shape[-1])
    elif refittable(site) and len(site.kernel) == 3:
        f = unfold3d(x, site.kernel, site.stride, site.padding, site.dilation)
    elif refittable(site):
        if len(site.kernel) == 1:  # conv1d as a conv2d of height 1
            x = x.unsqueeze(2)
            k, s, p, d = (1,) + site.kernel, (1,) + site.stride, (0,) + site.padding, (1,) + site.dilation
        else:
            k, s, p, d = site.kernel, site.stride, site.padding, site.dilation
        cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C*kk, L)
        f = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        return None
    if rows is not None:
        f = f[rows]
    return torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype)], dim=1)


def unfold3d(x: torch.Tensor, k: tuple, s: tuple, p: tuple, d: tuple) -> torch.Tensor:
    """(positions, channels * kd * kh * kw): a 3-D convolution's patches, in the order of its weight's
    ``reshape(out, -1)`` (torch has no F.unfold for volumes: MONAI's networks are 3-D)."""
    x = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]))
    for i in range(3):  # each unfold appends the window as the last dim; a dilation keeps every d-th
        x = x.unfold(2 + i, (k[i] - 1) * d[i] + 1, s[i])[..., ::d[i]]
    return x.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, x.shape[1] * k[0] * k[1] * k[2])


@dataclass
class ChannelStats:
    """Count, sum and sum of squares per input channel (float64 accumulators)."""

    n: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None

    def add(self, c: torch.Tensor) -> None:
        s, q = c.sum(0, dtype=torch.float64), (c.double() ** 2).sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.n += c.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    @property
    def norm(self) -> torch.Tensor:
        return self.sumsq.clamp(min=0).sqrt()

    @property
    def var(self) -> torch.Tensor:
        n = max(self.n, 2)
        return ((self.sumsq - self.sum ** 2 / n) / (n - 1)).clamp(min=0)


@dataclass
class Gram:
    """Sum of f f^T over samples (features augmented with a 1: the last row/column holds
    the feature sums and the sample count). Float64: sums over thousands of tokens; float32
    above FP64_MAX features, where a Gram is hundreds of MB and the refit solves in float32.
    On the row-space route (sites.rows_route) the samples themselves, ``x``, instead of ``m``."""

    m: torch.Tensor | None = None
    x: torch.Tensor | None = None  # (samples, features + 1) float32, while the row space is the cheaper

    def add(self, f: torch.Tensor, g: torch.Tensor | None = None, rows: bool = False) -> None:
        """Add f^T g (g defaults to f): a cross Gram between two models' inputs. ``rows``: keep f's rows."""
        if rows:
            self.x = f.clone() if self.x is None else torch.cat([self.x, f])
            return
        self.to_gram()
        prod = (f.T @ (f if g is None else g)).to(_dtype(f.shape[-1]))
        if self.m is None:
            self.m = prod
        else:
            self.m += prod

    def to_gram(self) -> None:
        """Fold kept rows into the Gram (too many samples for the row space, or ranks to sum)."""
        if self.x is not None:
            x, self.x = self.x, None
            self.add(x)

    @property
    def n(self) -> int:
        if self.x is not None:
            return int(self.x.shape[0])
        return int(round(float(self.m[-1, -1]))) if self.m is not None else 0


def _dtype(width: int) -> torch.dtype:
    return torch.float64 if width <= _sites.FP64_MAX + 1 else torch.float32


class _RowsGram(Gram):
    """The Gram of row-space folds, made when read (OBS): nothing held until then."""

    def __init__(self, xs: list[torch.Tensor]):
        self._xs, self._m = xs, None

    @property
    def m(self) -> torch.Tensor:
        if self._m is None:
            dt = _dtype(self._xs[0].shape[1])
            self._m = sum((x.to(dt).T @ x.to(dt) for x in self._xs), torch.zeros((), dtype=dt))
        return self._m


@dataclass
class SiteStats:
    """What calibration learned at one site."""

    site: Site
    channels: ChannelStats = field(default_factory=ChannelStats)
    folds: list[Gram] | None = None  # input Gram (or samples) per calibration fold (batches alternate)

    @property
    def gram(self) -> Gram | None:
        """The Gram over every batch (of row-space folds: computed when its ``m`` is read)."""
        if self.folds is None:
            return None
        xs = self.rows
        if xs is not None:
            return _RowsGram(xs)
        parts = [g.m for g in self.folds if g.m is not None]
        return Gram(parts[0] + parts[1] if len(parts) == 2 else parts[0] if parts else None)

    @property
    def rows(self) -> list[torch.Tensor] | None:
        """Each fold's samples where the site is on the row-space route, else None."""
        if not self.folds or any(g.m is not None for g in self.folds):
            return None
        xs = [g.x for g in self.folds if g.x is not None]
        return xs or None

    items: int = 0  # batch items seen so far: the folds alternate item by item

    def add(self, x: torch.Tensor, gram: bool, valid: torch.Tensor | None = None, batch: int = 0) -> None:
        rows = real_rows(self.site, x, valid)
        self.channels.add(channels(self.site, x, rows))
        if gram:
            f = features(self.site, x)
            if f is not None:
                self.folds = self.folds or [Gram(), Gram()]
                parts = split_folds(f, x.shape[0], self.items, rows)
                seen = sum(g.n for g in self.folds) + sum(p.shape[0] for p in parts)
                keep = all(g.m is None for g in self.folds) and _sites.rows_route(f.shape[1], seen)
                for fold, part in zip(self.folds, parts):
                    if not keep:
                        fold.to_gram()
                    if part.shape[0]:
                        fold.add(part, rows=keep)
        self.items += int(x.shape[0]) if x.dim() else 1


def reduce_stats(stats: dict[str, SiteStats]) -> None:
    """Sum every rank's statistics into each rank's records (calib/distributed.py). Each rank saw
    one contiguous slice of the batches and counted its folds from item 0: where an odd number of
    items come before its slice, its two folds are the other way round, and are swapped first."""
    if not distributed.active():
        return
    keys = sorted(stats)
    for st in stats.values():  # samples cannot be summed over ranks: their Grams can
        for g in st.folds or ():
            g.to_gram()
    before, total = distributed.items_before([stats[k].items for k in keys])
    parts = []
    for k, b, n in zip(keys, before, total):
        st = stats[k]
        folds = list(st.folds or [Gram(), Gram()])
        if b % 2:
            folds.reverse()
        st.items = n
        parts += [st.channels.sum, st.channels.sumsq, torch.tensor(float(st.channels.n)), folds[0].m, folds[1].m]
    summed = distributed.reduce_sum(parts)
    for i, k in enumerate(keys):
        s, q, n, f0, f1 = summed[5 * i: 5 * i + 5]
        st = stats[k]
        st.channels.sum, st.channels.sumsq, st.channels.n = s, q, int(round(float(n)))
        st.folds = None if f0 is None and f1 is None else [Gram(f0), Gram(f1)]


def reduce_folds(folds: list[tuple[Gram, ...]], items: int) -> list[tuple[Gram, ...]]:
    """Folds of Grams (a tuple per fold) summed over the ranks, each rank's swapped first where an
    odd number of items come before its slice (as in :func:`reduce_stats`)."""
    if not distributed.active():
        return folds
    (before,), _ = distributed.items_before([items])
    folds = folds[::-1] if before % 2 else folds
    summed, w = distributed.reduce_sum([g.m for f in folds for g in f]), len(folds[0])
    return [tuple(Gram(m) for m in summed[i * w:(i + 1) * w]) for i in range(len(folds))]


def split_folds(f: torch.Tensor, items: int, offset: int, rows: torch.Tensor | None = None,
                g: torch.Tensor | None = None) -> list:
    """Feature rows (and ``g``'s, the same rows of another model) of even and of odd batch items,
    counted from ``offset``: two cross-validation folds that do not depend on how the calibration
    set is cut into batches (one batch of 32 gives two folds of 16). ``rows``: the real ones."""
    per = max(f.shape[0] // max(items, 1), 1)
    odd = ((torch.arange(f.shape[0]) // per + offset) % 2).bool()
    if rows is not None:
        f, odd = f[rows], odd[rows]
        g = g[rows] if g is not None else None
    if g is None:
        return [f[~odd], f[odd]]
    return [(f[~odd], g[~odd]), (f[odd], g[odd])]


GRAM_BUDGET = 4 << 30  # bytes of input Grams calibration may hold at once for scoring


def gram_sites(dg, sites, notes: list[str]) -> set[str]:
    """The sites whose input Gram a reconstruction-aware score needs, unless they would hold
    more than :data:`GRAM_BUDGET` bytes (then none, and ``notes`` says so)."""
    out, size = set(), 0
    for s in sites:
        if refittable(s):
            d = dg.ir.values[s.w].shape[s.w_in] * s.window + 1
            size += 2 * 8 * d * d  # two folds, float64
            out.add(s.node)
    if size > GRAM_BUDGET:
        notes.append(f"obs needs {size / 2**30:.1f} GiB of input Grams; scored by activation instead")
        return set()
    return out
