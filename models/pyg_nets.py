"""Small random-init torch_geometric networks (graph learning): the PyG suite.

Each entry builds what a user would write with ``torch_geometric.nn``: two message-passing layers on
node features (a plain module around two convolutions), or one of PyG's model classes. ``inputs(seed,
nodes, edges)`` gives ``(x, edge_index)``: 32 features per node, random edges (seed 0: the example a
prune traces; other seeds and sizes: another graph). Nothing is downloaded.
"""
from __future__ import annotations

import torch

FEATURES, CLASSES = 32, 7


class TwoLayer(torch.nn.Module):
    """conv1 -> ReLU -> conv2, each called as conv(x, edge_index)."""

    def __init__(self, conv1: torch.nn.Module, conv2: torch.nn.Module):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


# name -> builder given torch_geometric.nn
MODELS = {
    "gcn": lambda G: TwoLayer(G.GCNConv(FEATURES, 64), G.GCNConv(64, CLASSES)),
    "sage": lambda G: TwoLayer(G.SAGEConv(FEATURES, 64), G.SAGEConv(64, CLASSES)),
    "gin": lambda G: TwoLayer(G.GINConv(torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(),
                                                            torch.nn.Linear(64, 64))), G.GINConv(torch.nn.Linear(64, CLASSES))),
    "gat": lambda G: TwoLayer(G.GATConv(FEATURES, 16, heads=4), G.GATConv(64, CLASSES, heads=1)),
    "gatv2": lambda G: TwoLayer(G.GATv2Conv(FEATURES, 16, heads=4), G.GATv2Conv(64, CLASSES, heads=1)),
    "transformer": lambda G: TwoLayer(G.TransformerConv(FEATURES, 16, heads=4), G.TransformerConv(64, CLASSES)),
    "models.gcn": lambda G: G.models.GCN(FEATURES, 64, 3, CLASSES),
    "models.graphsage": lambda G: G.models.GraphSAGE(FEATURES, 64, 3, CLASSES),
    "models.gat": lambda G: G.models.GAT(FEATURES, 64, 3, CLASSES, heads=4),
}


def build(name: str) -> torch.nn.Module:
    from torch_geometric import nn

    torch.manual_seed(0)
    return MODELS[name](nn).eval()


def inputs(seed: int = 0, nodes: int = 100, edges: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(nodes, FEATURES, generator=g), torch.randint(0, nodes, (2, edges), generator=g)
