"""The machine's ceiling for the benchmarks' "fraction of peak" figures (../shared/tools/machine_peak.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MACHINE_PEAK_SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "machine_peak.py"


def machine_peak():
    """The peak measured by the shared script (a dict), or None when it is not there or fails."""
    if not MACHINE_PEAK_SCRIPT.exists():
        print(f"(machine peak figure skipped: no {MACHINE_PEAK_SCRIPT})")
        return None
    try:
        out = subprocess.run(
            [sys.executable, str(MACHINE_PEAK_SCRIPT), "--size", "1024", "--repeats", "3"],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as error:  # the benchmark still runs without a peak figure
        print(f"(machine peak unavailable: {error})")
        return None
