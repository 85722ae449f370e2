"""Run every benchmark in turn, each in its own process, and print their figures.

Run: ``make bench`` or ``.venv/bin/python benchmarks/run_all.py [--quick]``.
The figures go to stdout; the README's performance section quotes them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("bench_middleware.py", []),
    ("bench_flask.py", []),
    ("bench_asgi.py", []),
    ("bench_pages.py", []),
    ("bench_sql_store.py", []),
    ("bench_flood.py", []),
    ("soak_headers.py", []),
    ("bench_ratelimit.py", []),
    ("bench_load.py", []),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    args = parser.parse_args()
    failed = []
    for script, extra in BENCHMARKS:
        if not (HERE / script).exists():
            continue
        command = [sys.executable, str(HERE / script), *extra]
        if args.quick:
            command.append(
                "--quick" if script != "soak_headers.py" else "--cases=20000"
            )
        print(f"\n##### {script} {' '.join(command[2:])}", flush=True)
        started = time.monotonic()
        if subprocess.run(command, cwd=HERE.parent, check=False).returncode != 0:
            failed.append(script)
        print(f"##### {script}: {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
