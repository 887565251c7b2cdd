"""PANDAMILDataset reads the benchmark layout with its defaults."""

from __future__ import annotations

from milsdk.datasets import PANDAMILDataset


def test_defaults_read_the_layout(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    ds = PANDAMILDataset(tmp_path, partition="test")
    assert ds.get_bag_names() == ["s3"]
    bag = ds[0]
    assert (
        bag["Y"].item() == 1
        and bag["y_inst"].tolist() == [1, 0]
        and bag["coords"].tolist() == [[0, 0], [0, 1]]
    )
