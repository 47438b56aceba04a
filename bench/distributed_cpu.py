"""One process against two (torchrun, DistributedDataParallel over gloo) on this machine's CPU cores.

    python -m bench.distributed_cpu [--repeats 2] [--captions 8000]

Both train the built-in data with the default settings for one epoch of `--captions` captions, each
run a fresh `torchrun --standalone` (so both pay the same start-up), alternating. One process uses
every core's thread; two processes get one thread each (OMP_NUM_THREADS), so they share the same cores.
Wall time is the whole command; steps per second come from the progress of training alone.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(processes, captions, out):
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    str(ROOT / "train.py"), "--out", str(out), "--epochs", "1", "--shapes-train", str(captions),
                    "--shapes-val", "100", "--shapes-test", "100", "--val-images", "100"],
                   check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternating")
    p.add_argument("--captions", type=int, default=8000, help="training captions (one epoch)")
    args = p.parse_args()
    times = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in times:
                times[n].append(run(n, args.captions, Path(tmp) / f"{n}-{repeat}"))
                print(f"{n} process(es): {times[n][-1]:.1f} s", flush=True)
    base = statistics.median(times[1])
    print(f"\n{os.cpu_count()} CPU cores, one epoch of {args.captions} captions, batch 32")
    for n, runs in times.items():
        median = statistics.median(runs)
        print(f"{n} process(es): {', '.join(f'{t:.0f}' for t in runs)} s, median {median:.0f} s ({base / median:.2f}x)")


if __name__ == "__main__":
    main()
