import math

import torch

from milsdk.nn import as_bool_mask, masked_softmax, normalize_weights


def test_masked_softmax_hand_case():
    x = torch.tensor([[0.0, math.log(3.0), 5.0]])
    out = masked_softmax(x, torch.tensor([[1, 1, 0]], dtype=torch.uint8))
    assert torch.allclose(out, torch.tensor([[0.25, 0.75, 0.0]]))


def test_masked_softmax_all_masked_row_is_zero_not_nan():
    x = torch.randn(2, 4)
    mask = torch.tensor([[False] * 4, [True, False, True, False]])
    out = masked_softmax(x, mask)
    assert torch.isfinite(out).all()
    assert out[0].sum() == 0
    assert torch.isclose(out[1].sum(), torch.tensor(1.0)) and out[1, 1] == 0 and out[1, 3] == 0


def test_masked_softmax_float16_large_values_stay_finite():
    x = torch.tensor([[60000.0, -60000.0, 1.0]], dtype=torch.float16)
    out = masked_softmax(x, torch.tensor([[True, True, False]]))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert out[0, 0] == 1.0


def test_masked_softmax_padding_does_not_change_real_positions():
    x = torch.randn(1, 5)
    padded = torch.cat([x, torch.randn(1, 7) * 100], dim=1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[:, :5] = True
    assert torch.allclose(masked_softmax(padded, mask)[:, :5], torch.softmax(x, 1), atol=1e-7)


def test_bool_and_uint8_masks_agree_and_none_means_all():
    x = torch.randn(3, 6, 2)
    m = torch.randint(0, 2, (3, 6))
    m[:, 0] = 1
    assert torch.equal(masked_softmax(x, m.bool()), masked_softmax(x, m.to(torch.uint8)))
    assert torch.allclose(masked_softmax(x, None), torch.softmax(x, 1))
    assert as_bool_mask(None, x).all() and as_bool_mask(m, x).dtype == torch.bool


def test_normalize_weights_sums_to_one_over_real_and_zero_on_padding():
    w = torch.tensor([[1.0, 3.0, 5.0], [0.0, 0.0, 0.0]])
    out = normalize_weights(w, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert torch.allclose(out[0], torch.tensor([0.25, 0.75, 0.0]))
    assert torch.equal(out[1], torch.zeros(3))
