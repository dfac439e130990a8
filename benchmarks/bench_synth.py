"""SynthCT-VL generation throughput: volumes/s and per-stage time at 64x128x128 with 2 workers.

Run:  .venv/bin/python benchmarks/bench_synth.py [--n 40] [--workers 2] [--size 64x128x128]
Prints one table. Stage times are summed over the worker processes (seconds of work per volume), so
they add up to about workers x wall time / volumes; volumes/s is end-to-end wall clock, files included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from medvl3d.data.synth import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="volumes to generate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", default="64x128x128", help="DxHxW")
    ap.add_argument("--out", default=None, help="keep the output here (default: a temp dir, removed)")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    out = args.out or tempfile.mkdtemp(prefix="bench_synth_")
    try:
        # The first call is a warm-up: start-up of the worker processes is not generation time.
        for name, n in (("warm", args.workers), ("run", args.n)):
            s = generate(
                os.path.join(out, name), n_train=n, n_test=0, size=size, workers=args.workers, progress=False
            )
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    n = s["n_train"]
    rows = [
        ("volumes", f"{n}"),
        ("size DxHxW", args.size),
        ("workers", f"{s['workers']}"),
        ("cpu cores", f"{os.cpu_count()}"),
        ("wall s", f"{s['seconds']:.2f}"),
        ("volumes/s", f"{s['volumes_per_s']:.2f}"),
    ]
    rows += [(f"{k} ms/vol", f"{1000 * v / n:.0f}") for k, v in s["stage_seconds"].items()]
    rows.append(("sum ms/vol", f"{1000 * sum(s['stage_seconds'].values()) / n:.0f}"))
    cpu = s["cpu_seconds_per_volume"]
    rows.append(("cpu ms/vol", f"{1000 * cpu:.0f}"))
    # What the same work gives when each worker has a core to itself (the wall figure above includes
    # whatever else the machine is running).
    rows.append(("volumes/s if cores idle", f"{s['workers'] / cpu:.2f}"))
    w = max(len(k) for k, _ in rows)
    print(f"| {'metric'.ljust(w)} | value |\n|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")


if __name__ == "__main__":
    main()
