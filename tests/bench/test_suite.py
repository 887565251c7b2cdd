"""The suite's --quick run, once: every file written, every number positive and finite (no timing is judged)."""

import json
import math

import pytest

from milsdk.bench import quick_config, run_suite
from milsdk.bench.suite import FLOAT16_WIRE_PATHS, IN_PROCESS_BESIDE_TRITON, _estimate, _Runner, Measurement, \
    planner_padding
from milsdk.errors import ModelConfigError


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    results = run_suite(quick_config(out), echo=lambda line: None)
    return out, results


def test_quick_run_writes_the_report_the_plot_and_the_json(quick_run):
    out, results = quick_run
    assert json.loads((out / "results.json").read_text())["config"]["quick"] is True
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "RESULTS.md").read_text()
    for heading in ("## Ceilings", "## Targets of issue 17", "## Client overhead", "## Planner padding",
                    "## Peak RSS", "### ABMIL", "### TransMIL"):
        assert heading in text


def test_quick_run_numbers_are_positive_and_finite(quick_run):
    _, results = quick_run
    assert all(g["gflops"] > 0 and math.isfinite(g["gflops"]) for g in results["gemm"])
    assert results["bandwidth_gbs"] > 0
    measured = [m for m in results["measurements"] if m["times"]]
    paths = {(m["model"], m["path"]) for m in measured}
    for model in ("ABMIL", "TransMIL"):
        for path in ("eager milsdk", "eager torchmil", "TorchScript (MILClient)", "onnxruntime (MILClient)",
                     "onnxruntime raw session"):
            assert (model, path) in paths
    assert all(t > 0 and math.isfinite(t) for m in measured for t in m["times"])
    assert all(m["flops"] > 0 for m in measured)
    assert all(o["raw_s"] > 0 and o["client_s"] > 0 for o in results["overhead"])
    assert all(r["peak"] >= r["bag_bytes"] for r in results["rss"])
    assert results["notes"]["ABMIL"][-1].startswith("eager torchmil holds the same weights")


def test_planner_padding_is_a_fraction_and_counts_every_bag():
    rows = planner_padding(512)
    assert [r["bags"] for r in rows] == [512, 512, 512]
    assert rows[1]["padded_fraction"] <= 0.03 and rows[1]["requests"] >= rows[2]["requests"]
    assert all(0 <= r["padded_fraction"] < 0.2 and r["requests"] >= 512 / r["max_batch_size"] for r in rows)


def test_sizes_that_would_take_too_long_are_estimated_from_the_previous_ones():
    rows = [Measurement("M", "p", 1000, [0.01]), Measurement("M", "p", 4000, [0.04])]  # linear
    assert _estimate(rows, 16000) == pytest.approx(0.16)
    assert _estimate(rows[:1], 4000) == pytest.approx(0.01 * 4**1.2)
    noisy = [Measurement("M", "p", 1000, [0.5, 0.01]), Measurement("M", "p", 4000, [0.04, 0.9])]
    assert _estimate(noisy, 16000) == pytest.approx(0.16)  # the fastest calls, not a disturbed median
    assert _estimate([], 10) is None


def test_paths_of_a_size_are_timed_in_turns_in_a_rotating_order(tmp_path):
    config = quick_config(tmp_path, repeats=3, warmup=1, max_seconds=1.0)
    results: list[Measurement] = [Measurement("M", "slow", 100, [0.1])]  # 0.1 s at 100: 0.23 s at 200, x7 calls
    calls: list[str] = []

    def path(name):
        def call():
            calls.append(name)
            if name == "broken" and calls.count("broken") == 2:
                raise RuntimeError("second call fails\nwith a traceback")
        return call

    rows = _Runner(config, results).measure_together(
        "M", 200, [(name, 1, path(name), "") for name in ("a", "b", "broken", "slow")]
        + [("absent", 1, None, "not exported")])
    # one untimed round, then three timed ones, each starting one path later, each turn an untimed and a timed
    # call; "broken" leaves at its failure (its turn's first call in the first timed round)
    assert calls == ["a", "b", "broken", "b", "b", "broken", "a", "a", "a", "a", "b", "b", "a", "a", "b", "b"]
    by_path = {r.path: r for r in rows}
    assert len(by_path["a"].times) == len(by_path["b"].times) == 3 and by_path["a"].skipped == ""
    assert by_path["broken"].times == [] and by_path["broken"].skipped == "failed: second call fails"
    assert by_path["slow"].times == [] and by_path["slow"].skipped.startswith("estimated ")
    assert by_path["absent"].skipped == "not exported" and results[-5:] == rows


def test_unknown_models_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown models NoSuchMIL"):
        run_suite(quick_config(tmp_path / "out", models=["NoSuchMIL"]), echo=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_a_triton_run_measures_every_transport_with_both_wire_formats(tmp_path):
    """A real server (the pip Triton, Python backend): HTTP, gRPC and shared memory with float32 features, HTTP
    and shared memory with the float16 wire format; every row in the transport table."""
    config = quick_config(tmp_path, models=("ABMIL",), sizes=(64,), repeats=2, triton=True, rss=False)
    results = run_suite(config, echo=lambda line: None)
    paths = {m["path"] for m in results["measurements"] if m["times"] and m["path"].startswith("Triton")}
    assert paths == {"Triton HTTP (MILClient)", "Triton gRPC (MILClient)", "Triton HTTP+shm (MILClient)",
                     *FLOAT16_WIRE_PATHS}
    # the in-process client was timed in the same rounds: the base of each Triton path's share
    beside = [m for m in results["measurements"] if m["path"] == IN_PROCESS_BESIDE_TRITON]
    assert len(beside) == 1 and len(beside[0]["times"]) == 2
    text = (tmp_path / "RESULTS.md").read_text()
    # 64 x (2 x 64 + 1) bytes: 8,256 bytes = 0.0 MB on the float16 wire
    assert "| ABMIL | Triton HTTP+shm float16 wire (MILClient) | 64 | 0.0 |" in text
    assert "ABMIL Triton HTTP >= 25% of in-process" in text and "float16 wire: " in text
