"""Graph neural network blocks. Every block computes on a bag's edge list (``milsdk.nn.adjacency``): it takes a
dense or sparse (B, N, N) ``adj`` (the training form) or ``edge_index`` (B, 2, E) / ``edge_weight`` (B, E) (the
serving form), and never builds an N x N matrix."""

from milsdk.nn.gnns.chebconv import ChebConv
from milsdk.nn.gnns.deepgcn import DeepGCNLayer
from milsdk.nn.gnns.dense_mincut_pool import dense_mincut_pool
from milsdk.nn.gnns.gcn_conv import GCNConv
from milsdk.nn.gnns.gnn_identity import GNNIdentity

__all__ = ["ChebConv", "DeepGCNLayer", "GCNConv", "GNNIdentity", "dense_mincut_pool"]
