"""The README's main job, `python train.py`, with the settings it had before against today's, side by side.

    python -m bench.main_job [--repeats 3]

Each run is a fresh `python train.py` process (data generation, training, validation, captioning the
1,000 test scenes), the two settings alternating; wall time and the share of test captions exactly
right (from each run's metrics.jsonl). Minutes of CPU: a few per run.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "before (5 epochs, batch 128, MLP x4)": ["--epochs", "5", "--batch-size", "128", "--lr", "3e-3",
                                             "--vit-mlp-ratio", "4", "--decoder-mlp-ratio", "4"],
    "today (the defaults)": [],
}


def run(flags, out):
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), *flags], check=True,
                   capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    final = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    return seconds, final["test_exact"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, flags) in enumerate(SETTINGS.items()):
                results[name].append(run(flags, Path(tmp) / f"{i}-{repeat}"))
                print(f"{name}: {results[name][-1][0]:.1f} s, exact {results[name][-1][1]:.1%}", flush=True)
    print(f"\n{'settings':40} {'wall time, each run (s)':>28} {'median':>8} {'exact test captions':>24}")
    base = statistics.median(t for t, _ in results[next(iter(SETTINGS))])
    for name, runs in results.items():
        times = ", ".join(f"{t:.0f}" for t, _ in runs)
        exact = ", ".join(f"{e:.1%}" for _, e in runs)
        median = statistics.median(t for t, _ in runs)
        print(f"{name:40} {times:>28} {median:7.0f}s {exact:>24}  ({base / median:.2f}x faster)")


if __name__ == "__main__":
    main()
