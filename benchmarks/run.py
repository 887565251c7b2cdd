"""The benchmark suite, one command: ``python benchmarks/run.py`` (the same as ``milsdk bench --out benchmarks``).

    python benchmarks/run.py --quick                                   # smoke run, seconds
    python benchmarks/run.py --models ABMIL,TransMIL --sizes 1000,4000,16000
    python benchmarks/run.py --triton                                  # + Triton HTTP / gRPC / shared memory

Writes benchmarks/RESULTS.md, benchmarks/throughput.png and benchmarks/results.json (``--out`` elsewhere). Every
option: ``python benchmarks/run.py --help``; what is measured and how: ``milsdk/bench/suite.py``. Not a test:
nothing is asserted about timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

from milsdk.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(Path(__file__).resolve().parent)]
    main.main(args=["bench", *args], prog_name="milsdk")  # the CLI group: its one-line errors
