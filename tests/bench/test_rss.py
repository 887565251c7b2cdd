from types import SimpleNamespace

from milsdk.bench.rss import peak_rss

from .conftest import D


def test_peak_rss_of_one_bag_is_measured_in_a_fresh_process(tiny_onnx, tmp_path):
    prepared = SimpleNamespace(name="ABMIL", onnx_path=tiny_onnx, torchscript_path=None, model=None)
    n = 200_000  # a 12.8 MB bag: well above what the process holds before it
    (row,) = peak_rss(prepared, n, D, tmp_path, full=False)
    assert row["path"] == "onnxruntime (MILClient)" and row["bag_bytes"] == n * D * 4
    assert "error" not in row, row
    assert row["peak"] >= row["peak_before_bag"] + row["bag_bytes"] * 0.9
    # a fresh process: far below this test process's own peak (torch is imported here, not there)
    assert row["peak_before_bag"] < 400e6
