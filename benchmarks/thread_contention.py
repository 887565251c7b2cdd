"""torch's OpenMP threads under CPU contention: the default spin-wait policy against ``OMP_WAIT_POLICY=PASSIVE``
(what the ``milsdk`` command sets unless the environment already has a value) and one thread, side by side.

Each workload runs in a fresh process (the policy is read when torch's OpenMP runtime loads), quiet and with
``--busy`` extra processes spinning on the CPU (a machine shared with other jobs), ``--repeats`` times; the
medians go to ``benchmarks/results/thread_contention.md``.

    python benchmarks/thread_contention.py            # 3 repeats, busy = 2 x cores

Workloads: ``train`` = 3 epochs of ABMIL (D = 256) on 120 small bags in batches of 4, the demo's kind of training
(many small operators, one OpenMP barrier each); ``forward`` = one eager ABMIL forward on a 16,000 x 1024 bag
(few large operators).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = {
    "train": """
import time, torch
from milsdk.models import ABMIL
from milsdk.data.collate import collate_fn
torch.manual_seed(0)
sizes = torch.randint(20, 200, (120,))
bags = [{"X": torch.randn(int(n), 256), "Y": torch.tensor(float(i % 2))} for i, n in enumerate(sizes)]
model = ABMIL(in_shape=(256,))
opt = torch.optim.Adam(model.parameters(), 1e-3)
start = time.perf_counter()
for epoch in range(3):
    for i in range(0, len(bags), 4):
        batch = collate_fn(bags[i:i + 4])
        opt.zero_grad()
        _, losses = model.compute_loss(batch["Y"], batch["X"], batch["mask"])
        sum(losses.values()).backward()
        opt.step()
print(time.perf_counter() - start)
""",
    "forward": """
import time, torch
from milsdk.models import ABMIL
torch.manual_seed(0)
model = ABMIL(in_shape=(1024,)).eval()
x = torch.randn(1, 16000, 1024)
with torch.inference_mode():
    model(x)
    start = time.perf_counter()
    for _ in range(5):
        model(x)
print((time.perf_counter() - start) / 5)
""",
}

VARIANTS = {
    "default (spin-wait)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def _run(code: str, extra_env: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "thread_contention.md")
    args = parser.parse_args()
    rows = []
    for condition in ("quiet", f"{args.busy} busy processes"):
        busy = []
        if condition != "quiet":
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            time.sleep(1.0)
        try:
            for workload, code in WORKLOADS.items():
                for variant, env in VARIANTS.items():
                    times = [_run(code, env) for _ in range(args.repeats)]
                    rows.append((condition, workload, variant, statistics.median(times), min(times), max(times)))
                    print(f"{condition:20s} {workload:8s} {variant:26s} median {rows[-1][3]:.3f} s "
                          f"(min {rows[-1][4]:.3f}, max {rows[-1][5]:.3f})", flush=True)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    import torch

    lines = [
        "# torch's OpenMP wait policy under CPU contention",
        "",
        f"`python benchmarks/thread_contention.py --repeats {args.repeats} --busy {args.busy}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} logical cores, torch "
        f"{torch.__version__}, load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}. "
        "Seconds, each run a fresh process; median (min - max) of the repeats.",
        "",
        "| condition | workload | variant | median s | min - max s |",
        "|---|---|---|---:|---|",
    ]
    lines += [f"| {c} | {w} | {v} | {med:.3f} | {lo:.3f} - {hi:.3f} |" for c, w, v, med, lo, hi in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
