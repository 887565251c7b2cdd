"""Print the torchmil parity summary: ``python -m milsdk.compat.parity_report`` (needs ``pip install
torchmil==1.0.2``, part of the ``test`` extra). Exit code 1 when milsdk differs from torchmil anywhere the
differences list (``milsdk.compat.torchmil_differences``) does not say, or the list names a difference that
is gone."""

from __future__ import annotations

import sys
import warnings

from milsdk.compat.parity import ParityReport, run_parity
from milsdk.compat.torchmil_differences import ABSENT, BEHAVIOUR, SIGNATURE

__all__ = ["format_summary", "unexplained", "main"]


def unexplained(report: ParityReport) -> list[str]:
    """Problems the differences list does not account for, one line each ([] = parity holds)."""
    out = [f"absent, not listed: {p}" for p in report.absent if p not in ABSENT]
    out += [f"listed absent but present: {p}" for p in ABSENT if p not in report.absent]
    out += [f"signature differs, not listed: {p}: {'; '.join(v)}" for p, v in report.signatures.items()
            if p not in SIGNATURE]
    out += [f"listed signature difference is gone: {p}" for p in SIGNATURE if p not in report.signatures]
    return out


def format_summary(report: ParityReport) -> str:
    """The closing-note summary: counts, then every listed difference with its reason."""
    lines = [
        f"torchmil 1.0.2 parity: {len(report.modules)} modules, {len(report.names)} names checked, "
        f"{report.present} present at the same path, {len(report.absent)} absent (listed), "
        f"{len(report.signatures)} signature differences (listed), {len(BEHAVIOUR)} behaviour differences (listed)",
    ]
    for title, table in (("absent", ABSENT), ("signature", SIGNATURE), ("behaviour", BEHAVIOUR)):
        lines.append(f"{title} ({len(table)}):")
        lines += [f"  {name}: {reason}" for name, reason in table.items()]
    return "\n".join(lines)


def main() -> int:
    warnings.filterwarnings("ignore")
    report = run_parity()
    print(format_summary(report))
    problems = unexplained(report)
    for p in problems:
        print("UNEXPLAINED", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
