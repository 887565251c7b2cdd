from milsdk.bench.report import ceiling, targets, write_plot, write_report


def _results():
    def row(model, path, n, seconds, flops=0):
        return {"model": model, "path": path, "n": n, "times": [seconds] * 3, "flops": flops, "skipped": ""}

    return {
        "config": {"dim": 8, "repeats": 3, "warmup": 1, "quick": False, "triton": True, "command": "test"},
        "machine": {"cpu": "Test CPU", "cores": 2, "memory_gb": 1.0, "cpu_flags": [], "platform": "p",
                    "python": "3", "versions": {"numpy": "2"}, "date": "2026-12-01 12:00 UTC",
                    "load_average": [0.1, 0.1, 0.1], "load_average_end": [0.2, 0.2, 0.2]},
        "gemm": [{"runtime": "numpy", "shape": "[16000x1024]x[1024x128]", "gflops": 100.0},
                 {"runtime": "onnxruntime", "shape": "[16000x1024]x[1024x128]", "gflops": 400.0},
                 {"runtime": "onnxruntime", "shape": "[4096x4096]x[4096x4096]", "gflops": 450.0}],
        "bandwidth_gbs": 20.0,
        "planner": [{"setting": "Triton defaults", "max_instances": 32768, "max_batch_size": 8, "bags": 512,
                     "requests": 90, "padded_fraction": 0.025}],
        "measurements": [
            row("ABMIL", "onnxruntime (MILClient)", 16000, 0.016, flops=int(4e9)),  # 250 GFLOP/s, 1M inst/s
            row("ABMIL", "eager torchmil", 16000, 0.040, flops=int(4e9)),
            row("ABMIL", "Triton HTTP (MILClient)", 16000, 0.064),
            row("ABMIL", "onnxruntime int8 (MILClient)", 16000, 0.010, flops=int(4e9)),
            row("ABMIL", "TorchScript bfloat16 (MILClient)", 16000, 0.008, flops=int(4e9)),
            {"model": "ABMIL", "path": "eager milsdk", "n": 64000, "times": [], "flops": 0,
             "skipped": "estimated 99 s > max 30 s"},
        ],
        "overhead": [{"model": "ABMIL", "bags": "1 bag x 16000", "instances": 16000, "raw_s": 0.015,
                      "client_s": 0.016, "overhead": 1 / 15, "outside_run": 0.05}],
        "rss": [{"model": "ABMIL", "path": "onnxruntime (MILClient)", "n": 100000, "bag_bytes": 4e8,
                 "peak_before_bag": 1e8, "peak": 8e8}],
        "notes": {"ABMIL": ["eager torchmil holds the same weights"]},
        "accuracy": {"ABMIL": {
            "onnxruntime int8 (MILClient)": {"summary": "s", "max_probability_change": 0.0031,
                                             "min_attention_spearman": 0.99, "passed": True, "sizes": [16000]},
            "TorchScript bfloat16 (MILClient)": {"summary": "s", "max_probability_change": 0.0002,
                                                 "min_attention_spearman": None, "passed": True, "sizes": [16000]}}},
        "seconds": 12.0,
    }


def test_the_ceiling_is_the_fastest_runtime_on_the_first_layer_shape():
    assert ceiling(_results())["gflops"] == 400.0


def test_targets_state_the_measured_figures():
    found = dict(targets(_results()))
    assert found["ABMIL served >= 80% of the GEMM bound at 16k"].startswith("250 GFLOP/s = 62% of 400")
    assert found["ABMIL served >= x2.0 torchmil eager at 16k"].startswith("x2.50 at N=16,000")
    assert found["ABMIL Triton HTTP >= 25% of in-process"] == "25% at N=16,000"
    assert found["ABMIL Triton HTTP+shm >= 70% of in-process"] == "not measured (run with --triton)"
    assert found["padding through Triton <= 3%"].startswith("2.5%")
    assert found["ABMIL peak RSS of a 100k bag <= 3x the bag"].startswith("2.00x at N=100,000")
    assert found["client overhead <= 5% over a default onnxruntime session"] == (
        "ABMIL 1 bag x 16000: +6.7% (p50), +6.7% (fastest calls)")
    assert found["TransMIL served >= x1.7 torchmil eager at 4k"] == "not measured at N=4,000"
    assert found["ABMIL int8: >= x1.8 over float32 served, probability change <= 0.02, attention Spearman >= 0.98"] \
        == ("x1.60 at N=16,000 (1,600,000 vs 1,000,000 inst/s); max probability change 0.0031, "
            "min attention Spearman 0.9900 (synthetic bags)")
    assert found["TransMIL int8: >= x1.8 over float32 served, probability change <= 0.02, attention Spearman >= 0.98"] \
        .startswith("not measured")
    assert found["ABMIL bfloat16 (cpu-bf16, measured against int8's goal): >= x1.8 over float32 served, probability "
                 "change <= 0.02, attention Spearman >= 0.98"] == (
        "x2.00 at N=16,000 (2,000,000 vs 1,000,000 inst/s); max probability change 0.0002, "
        "min attention Spearman n/a (synthetic bags)")
    assert found["ABMIL int8 weights (cpu-int8-vnni): >= x1.8 over float32 served, probability change <= 0.02, "
                 "attention Spearman >= 0.98"] == (
        "not measured (no onnxruntime int8 weights (MILClient) row for this model in this run)")


def test_report_and_plot_are_written(tmp_path):
    results = _results()
    text = write_report(results, tmp_path / "RESULTS.md").read_text()
    assert "| onnxruntime (MILClient) | 16,000 | 1,000,000 | 16.00 | 16.00 | 250.0 | 62% | x2.50 |" in text
    assert "- ABMIL, eager milsdk, N=64,000: estimated 99 s > max 30 s" in text
    assert "Test CPU" in text and "load average" in text.lower()
    png = write_plot(results, tmp_path / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "## Triton transport" not in text  # no loopback measured: no transport table


def test_triton_rows_are_shown_as_transport_against_the_loopback_copy(tmp_path):
    results = _results()
    results["loopback_gbs"] = 0.5
    text = write_report(results, tmp_path / "RESULTS.md").read_text()
    # 16,000 x (4 x 8 + 1) bytes = 0.528 MB in 64 ms: 0.00825 GB/s, 2% of 0.5; in-process p50 16 ms
    assert "Loopback TCP" in text and "**0.50 GB/s**" in text
    assert "| ABMIL | Triton HTTP (MILClient) | 16,000 | 0.5 | 64.0 | 0.01 | 2% | 16.0 |" in text


def test_float16_wire_rows_count_two_bytes_per_feature_and_join_their_target_line(tmp_path):
    results = _results()
    results["loopback_gbs"] = 0.5
    results["measurements"].append({"model": "ABMIL", "path": "Triton HTTP float16 wire (MILClient)", "n": 16000,
                                    "times": [0.032] * 3, "flops": 0, "skipped": ""})
    found = dict(targets(results))
    assert found["ABMIL Triton HTTP >= 25% of in-process"] == "25% at N=16,000; float16 wire: 50% at N=16,000"
    text = write_report(results, tmp_path / "RESULTS.md").read_text()
    # 16,000 x (2 x 8 + 1) bytes = 0.272 MB in 32 ms: 0.0085 GB/s
    assert "| ABMIL | Triton HTTP float16 wire (MILClient) | 16,000 | 0.3 | 32.0 | 0.01 | 2% | 16.0 |" in text


def test_a_new_run_keeps_the_sections_other_tools_wrote(tmp_path):
    """benchmarks/soak.py appends '## Soak' to RESULTS.md: a later suite run rewrites its own sections only."""
    path = tmp_path / "RESULTS.md"
    write_report(_results(), path)
    path.write_text(path.read_text() + "\n## Soak\n\n10,000 requests, 0 errors\n")
    results = _results()
    results["bandwidth_gbs"] = 33.0
    text = write_report(results, path).read_text()
    assert text.count("## Soak") == 1 and "10,000 requests, 0 errors" in text
    assert text.count("## Ceilings") == 1 and "33" in text
