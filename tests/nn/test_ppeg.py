import math

import pytest
import torch

from milsdk.nn import PPEG
from milsdk.nn.ppeg import ceil_sqrt, grid_side

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _ppeg(dim=4, seed=0):
    torch.manual_seed(seed)
    ppeg = PPEG(dim)
    for conv in (ppeg.proj7, ppeg.proj5, ppeg.proj3):
        torch.nn.init.normal_(conv.weight, std=0.3)
        torch.nn.init.normal_(conv.bias, std=0.3)
    return ppeg


def _reference(ppeg, tokens, side):
    """The paper's formula on one bag's side x side map (zero cells past the last token)."""
    D = tokens.shape[-1]
    cells = torch.zeros(side * side, D)
    cells[: tokens.shape[0]] = tokens
    grid = cells.T.reshape(1, D, side, side)
    out = grid + ppeg.proj7(grid) + ppeg.proj5(grid) + ppeg.proj3(grid)
    return out.flatten(2)[0].T[: tokens.shape[0]]


def test_ceil_sqrt_and_grid_side_are_exact():
    n = torch.arange(0, 2000)
    expected = [math.isqrt(v - 1) + 1 if v > 0 else 0 for v in range(2000)]
    assert ceil_sqrt(n).tolist() == expected
    assert [grid_side(v) for v in range(2000)] == expected
    big = [2**40, 2**40 + 1, (2**24 + 1) ** 2, (2**24 + 1) ** 2 - 1, 10**12 + 7]
    assert ceil_sqrt(torch.tensor(big)).tolist() == [math.isqrt(v - 1) + 1 for v in big]
    assert [grid_side(v) for v in big] == [math.isqrt(v - 1) + 1 for v in big]


def test_full_square_matches_three_convolutions():
    ppeg = _ppeg()
    X = torch.randn(2, 16, 4)
    with torch.no_grad():
        Y = ppeg(X)
        for b in range(2):
            assert (Y[b] - _reference(ppeg, X[b], 4)).abs().max() <= 1e-5


def test_each_bag_block_equals_the_bag_alone():
    ppeg = _ppeg()
    sides = [5, 3, 1, 0]
    X = torch.randn(len(sides), 25, 4)
    with torch.no_grad():
        Y = ppeg(X, torch.tensor(sides))
        for b, s in enumerate(sides):
            if s:
                alone = ppeg(X[b : b + 1, : s * s])[0]
                assert (Y[b, : s * s] - alone).abs().max() <= 1e-6
                assert (Y[b, : s * s] - _reference(ppeg, X[b, : s * s], s)).abs().max() <= 1e-5
            assert torch.equal(Y[b, s * s :], X[b, s * s :])  # tokens outside the map pass through


@pytest.mark.parametrize("n_leading", [1, 2])
def test_forward_after_leading_tokens_equals_slice_and_concatenation(n_leading):
    """What TransMIL runs: the class token in front passes through, the map tokens after it are encoded."""
    ppeg = _ppeg()
    sides = [5, 3, 1, 0]
    X = torch.randn(len(sides), n_leading + 25, 4)
    with torch.no_grad():
        got = ppeg.forward_after(X, torch.tensor(sides), n_leading)
        expected = torch.cat([X[:, :n_leading], ppeg(X[:, n_leading:], torch.tensor(sides))], dim=1)
    assert torch.equal(got[:, :n_leading], X[:, :n_leading])
    assert (got - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("n_leading", [1, 2])
def test_forward_after_without_keep_outside_zeroes_only_the_tokens_past_each_map(n_leading):
    """TransMIL's form: leading and map tokens as with ``keep_outside``, padding tokens zero (they are masked
    out of everything after, and X need not be read once the map is laid out)."""
    ppeg = _ppeg()
    sides = [5, 3, 1, 0]
    X = torch.randn(len(sides), n_leading + 25, 4)
    side = torch.tensor(sides)
    with torch.no_grad():
        kept = ppeg.forward_after(X, side, n_leading)
        got = ppeg.forward_after(X, side, n_leading, keep_outside=False)
    for b, s in enumerate(sides):
        on_map = n_leading + s * s
        assert torch.equal(got[b, :on_map], kept[b, :on_map])
        assert (got[b, on_map:] == 0).all()


def test_non_square_length_uses_zero_cells():
    ppeg = _ppeg()
    X = torch.randn(1, 7, 4)  # side ceil(sqrt(7)) = 3, last two cells empty
    with torch.no_grad():
        assert (ppeg(X)[0] - _reference(ppeg, X[0], 3)).abs().max() <= 1e-5


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    ppeg = _ppeg()
    scripted = torch.jit.script(ppeg)
    X = torch.randn(3, 30, 4)
    side = torch.tensor([5, 2, 0])
    with torch.no_grad():
        assert torch.equal(scripted(X, side), ppeg(X, side))
        assert torch.equal(scripted(X[:, :11]), ppeg(X[:, :11]))


@pytest.mark.filterwarnings("ignore")
def test_export_keeps_grid_side_symbolic():
    ppeg = _ppeg().eval()
    K = torch.export.Dim("K", min=1, max=100_000)
    ep = torch.export.export(ppeg, (torch.randn(2, 37, 4),), dynamic_shapes={"x": {1: K}})
    exported = ep.module()
    with torch.no_grad():
        for k in (1, 5, 64, 1000):
            X = torch.randn(2, k, 4)
            assert (exported(X) - ppeg(X)).abs().max() <= 1e-5
