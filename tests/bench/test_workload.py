import numpy as np
import torch

from milsdk.bench.workload import count_flops, make_bag, model_inputs


def test_flops_of_a_linear_layer_are_two_per_multiply_add():
    layer = torch.nn.Linear(32, 8, bias=True)
    x = torch.randn(100, 32)
    assert count_flops(lambda: layer(x)) == 2 * 100 * 32 * 8
    # element-wise work is not counted
    assert count_flops(lambda: torch.relu(x) * 2) == 0


def test_a_bag_has_features_and_distinct_grid_cells():
    bag = make_bag(50, 6, seed=1)
    assert bag["features"].shape == (50, 6) and bag["features"].dtype == np.float32
    assert bag["coords"].shape == (50, 2) and bag["coords"].max() <= 7  # ceil(sqrt(50)) = 8 cells a side
    assert len({tuple(c) for c in bag["coords"]}) == 50
    np.testing.assert_array_equal(make_bag(50, 6, seed=1)["features"], bag["features"])


def test_model_inputs_follow_the_contract_and_build_the_grid_graph():
    bag = make_bag(9, 4)
    plain = model_inputs(bag, ["features", "mask"])
    assert set(plain) == {"features", "mask"} and plain["features"].shape == (1, 9, 4) and plain["mask"].all()
    graph = model_inputs(bag, ["features", "mask", "edge_index", "edge_weight"])
    edges = graph["edge_index"][0]
    assert edges.shape[0] == 2 and edges.shape[1] == graph["edge_weight"].shape[1] > 0
    assert edges.min() >= 0 and edges.max() < 9
