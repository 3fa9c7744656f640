"""What a model shows the world stays whole: inputs, outputs, and values the forward computes and drops
(graphprune/boundaries.py). UperNet's auxiliary head, computed on every call and read only by a training
loss, lost a class (5 -> 4) to the default call; the loss then failed on the first labels passed."""
from __future__ import annotations

import torch
from torch import nn

import graphprune as gp
from graphprune.reasons import MODEL_IO


class AuxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)
        self.aux_inner, self.aux = nn.Conv2d(16, 12, 3, padding=1), nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.body(x))
        logits = self.head(h)
        aux = self.aux(torch.relu(self.aux_inner(h)))  # computed on every call, read only for the loss
        if labels is not None:
            return nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(aux, labels)
        return logits


class UnusedPiece(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, _ = self.a(x).chunk(2, dim=-1)  # the second piece is computed and never read
        return self.b(torch.relu(kept))


def test_a_dropped_auxiliary_head_keeps_its_classes():
    torch.manual_seed(0)
    model, args = AuxHead().eval(), (torch.randn(2, 3, 8, 8),)
    g = gp.trace(model, args)
    aux = [grp for grp in g.groups if any(m.name == "aux.weight" and m.dim == 0 for m in grp.members)]
    assert aux and not aux[0].prunable
    assert any(r.kind == MODEL_IO and "dropped value" in str(r) for r in aux[0].frozen), aux[0].frozen
    pruned, report = gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.aux.out_channels == 5 and pruned.aux_inner.out_channels == 6
    labels = torch.randint(0, 5, (2, 8, 8))
    assert torch.isfinite(pruned(args[0], labels))  # the loss reads all five classes


def test_an_unread_piece_of_a_split_is_no_dropped_branch():
    # an unused item of a multi-output op is not the end of a branch: its channels still prune
    torch.manual_seed(0)
    model, args = UnusedPiece().eval(), (torch.randn(3, 8),)
    pruned, report = gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.a.out_features < 32
