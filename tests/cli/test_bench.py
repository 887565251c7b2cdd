import json

from click.testing import CliRunner

from milsdk.bench.workload import BFLOAT16_PATH, INT8_WEIGHTS_PATH
from milsdk.cli import main
from milsdk.utils.cpu import bfloat16_is_emulated, cpu_flags, int8_sums_saturate


def test_bench_quick_writes_the_report(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--quick", "--models", "abmil", "--sizes", "32",
                                       "--no-rss", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["models"] == ["ABMIL"] and results["config"]["sizes"] == [32]
    assert results["rss"] == []
    assert all(t > 0 for m in results["measurements"] for t in m["times"])
    measured = {m["path"] for m in results["measurements"] if m["times"]}
    assert measured >= {"onnxruntime (MILClient)", "onnxruntime int8 (MILClient)"}
    accuracy = results["accuracy"]["ABMIL"]
    for path, report in accuracy.items():  # int8, and where this CPU has the kernels int8 weights / bfloat16
        assert path in measured, path
        assert report["sizes"] == [32] and 0 <= report["max_probability_change"] <= 0.02
    assert "onnxruntime int8 (MILClient)" in accuracy
    flags = cpu_flags()
    assert (INT8_WEIGHTS_PATH in measured) == (not int8_sums_saturate(flags))
    assert (BFLOAT16_PATH in measured) == (not bfloat16_is_emulated(flags))
    assert (out / "RESULTS.md").is_file() and (out / "throughput.png").is_file()
    assert "ABMIL int8: >= x1.8 over float32 served" in (out / "RESULTS.md").read_text()


def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path):
    out = tmp_path / "bench"
    for args, message in ((["--models", "NoSuchMIL"], "unknown model(s) NoSuchMIL"),
                          (["--sizes", "10,x"], "not a comma-separated list of integers"),
                          (["--sizes", "0"], "bag sizes >= 1")):
        result = CliRunner().invoke(main, ["bench", "--quick", *args, "--out", str(out)])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not out.exists()
