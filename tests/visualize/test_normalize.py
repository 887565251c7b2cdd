import numpy as np
import pytest

from milsdk.errors import MILSDKError
from milsdk.visualize import VisualizeError, normalization_label, normalize_attention


def test_rank_without_ties_is_the_percentile_rank():
    out = normalize_attention(np.array([0.1, 0.5, 0.2, 10.0]), "rank")
    np.testing.assert_allclose(out, [0.0, 2 / 3, 1 / 3, 1.0])


def test_rank_gives_ties_one_value_with_lowest_0_and_highest_1():
    np.testing.assert_allclose(normalize_attention(np.array([1.0, 1.0, 2.0, 3.0])), [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalize_attention(np.array([0.0, 5.0, 5.0])), [0.0, 1.0, 1.0])
    one_hot = np.zeros(7)
    one_hot[3] = 1.0
    np.testing.assert_array_equal(normalize_attention(one_hot), one_hot)


def test_rank_is_robust_to_one_huge_value_where_minmax_is_not():
    att = np.array([1.0, 2.0, 3.0, 1e9])
    np.testing.assert_allclose(normalize_attention(att, "rank"), [0.0, 1 / 3, 2 / 3, 1.0])
    minmax = normalize_attention(att, "minmax")
    assert minmax[3] == 1.0 and minmax[:3].max() < 1e-8


def test_minmax_hand_case():
    np.testing.assert_allclose(
        normalize_attention(np.array([2.0, 4.0, 6.0, 3.0]), "minmax"), [0, 0.5, 1, 0.25]
    )


@pytest.mark.parametrize("method", ["rank", "minmax"])
def test_constant_and_single_instance_bags_map_to_zeros(method):
    np.testing.assert_array_equal(normalize_attention(np.full(5, 0.2), method), np.zeros(5))
    np.testing.assert_array_equal(normalize_attention(np.array([0.7]), method), [0.0])


def test_default_is_rank_and_order_follows_the_input():
    rng = np.random.default_rng(0)
    att, perm = rng.random(50), rng.permutation(50)
    np.testing.assert_allclose(normalize_attention(att)[perm], normalize_attention(att[perm], "rank"))


@pytest.mark.parametrize(
    "att, message",
    [
        (np.array([]), r"shape \(N,\)"),
        (np.ones((2, 3)), r"shape \(N,\)"),
        (np.array([0.1, np.nan]), "not finite"),
        (np.array([np.inf, 0.0]), "not finite"),
    ],
)
def test_bad_attention_is_a_one_line_error(att, message):
    with pytest.raises(VisualizeError, match=message) as info:
        normalize_attention(att)
    assert isinstance(info.value, MILSDKError) and isinstance(info.value, ValueError)


def test_unknown_method_and_labels():
    with pytest.raises(VisualizeError, match="unknown normalisation 'zscore'"):
        normalize_attention(np.ones(3), "zscore")
    assert "rank within the bag" in normalization_label("rank")
    assert "min-max" in normalization_label("minmax")
