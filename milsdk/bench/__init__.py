"""The benchmark suite behind ``milsdk bench`` and ``benchmarks/run.py`` (see :mod:`milsdk.bench.suite`).

- :mod:`~milsdk.bench.ceilings`: float32 GEMM GFLOP/s per runtime, memory bandwidth.
- :mod:`~milsdk.bench.workload`: the models (milsdk, torchmil with the same weights, exports), bags, FLOP counts.
- :mod:`~milsdk.bench.overhead`: MILClient against a raw onnxruntime session on the same padded batches.
- :mod:`~milsdk.bench.rss`: peak RSS of one bag in a fresh process.
- :mod:`~milsdk.bench.report`: RESULTS.md and the throughput PNG.

Nothing here is imported by the rest of milsdk; timings are reported, never asserted.
"""

from milsdk.bench.suite import DEFAULT_SIZES, PATHS, SuiteConfig, quick_config, run_suite

__all__ = ["SuiteConfig", "quick_config", "run_suite", "DEFAULT_SIZES", "PATHS"]
