"""CAMELYON16MILDataset reads the benchmark layout with its defaults (UNI features, 512 px patches)."""

from __future__ import annotations

import inspect

from milsdk.datasets import CAMELYON16MILDataset, WSIBenchmarkDataset


def test_defaults_read_the_layout(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    ds = CAMELYON16MILDataset(tmp_path)
    assert isinstance(ds, WSIBenchmarkDataset)
    assert ds.get_bag_names() == ["s1", "s2"] and ds[0]["X"].shape == (6, 8)


def test_constructor_mirrors_the_reference():
    params = inspect.signature(CAMELYON16MILDataset).parameters
    assert list(params)[:5] == ["root", "features", "partition", "bag_keys", "patch_size"]
    assert params["features"].default == "UNI" and params["patch_size"].default == 512
    assert params["load_at_init"].default is True and params["verbose"].default is False
