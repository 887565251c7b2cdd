"""GNNIdentity returns its input whatever graph arguments it gets, and scripts."""

from __future__ import annotations

import torch

from milsdk.nn.gnns import GNNIdentity


def test_identity_ignores_the_graph():
    x = torch.randn(2, 3, 4)
    assert GNNIdentity()(x) is x
    assert GNNIdentity()(x, torch.ones(2, 3, 3), torch.ones(2, 3)) is x
    assert torch.equal(torch.jit.script(GNNIdentity())(x, edge_index=torch.zeros(2, 2, 1, dtype=torch.long)), x)
