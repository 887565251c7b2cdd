import torch

from milsdk.nn import MaxPool, MeanPool


def test_mean_pool_masked_hand_case_and_empty_bag():
    X = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.uint8)
    out = MeanPool()(X, mask)
    assert out.tolist() == [[2.0, 3.0], [0.0, 0.0]]


def test_max_pool_accepts_uint8_and_bool_and_ignores_padding():
    X = torch.tensor([[[1.0, -2.0], [3.0, -4.0], [100.0, 100.0]]])
    for mask in (torch.tensor([[1, 1, 0]], dtype=torch.uint8), torch.tensor([[True, True, False]])):
        assert MaxPool()(X, mask).tolist() == [[3.0, -2.0]]
    assert MaxPool()(X).tolist() == [[100.0, 100.0]]
    assert MaxPool()(X, torch.zeros(1, 3)).tolist() == [[0.0, 0.0]]


def test_max_pool_scripts_and_gives_zero_for_an_empty_bag():
    pool = torch.jit.script(MaxPool())
    X = torch.tensor([[[1.0, -2.0], [3.0, -1.0]], [[5.0, 5.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True], [False, False]])
    assert torch.equal(pool(X, mask), torch.tensor([[3.0, -1.0], [0.0, 0.0]]))
    assert torch.equal(pool(X, mask.to(torch.uint8)), pool(X, mask))
