"""Throughput of the refined Lee filter (sarlang_nb.preprocess.refined_lee): prints figures, never pass/fail.

    python bench/preprocess.py [--quick] [--threads N] [--busy-seconds S]

CPU: MPix/s for 512^2, 1024^2 and 4096^2 float32 images (wall clock, best of a few runs, and CPU seconds, since this
machine is shared), and the speed-up over the per-pixel reference loop; rule "snap" (ESA SNAP's arithmetic) too.
refined_lee runs on one CPU thread unless asked (threads=N).
Threads on a busy machine: 1024^2 with 1 and with 2 intra-op threads, quiet and while a competing process keeps one
core busy (a child that spins for at most --busy-seconds and stops by itself; it is also ended when the figures are
taken). With two threads each of ~150 steps waits for the slower thread, so a busy neighbour costs far more than
its core.
CUDA (when torch.cuda.is_available()): a batch of 512x512 images and one 4096^2 image, in GPix/s.
Targets (issue 4): >= 10 MPix/s on the 2-core CPU (1024^2 in <= 0.1 s), >= 100x the per-pixel loop, >= 1 GPix/s CUDA.
"""
import argparse, os, sys, time, subprocess
import numpy as np
import torch
from sarlang_nb.preprocess import refined_lee, refined_lee_reference


def best_of(f, n):
    "Best wall time and its CPU time over n runs (after one warm-up)."
    f()
    best = (float("inf"), 0.0)
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip 4096^2 and use fewer repetitions")
    ap.add_argument("--threads", type=int, default=None, help="threads= for the size table (default: refined_lee's own, 1)")
    ap.add_argument("--busy-seconds", type=float, default=60.0, help="longest the competing busy process runs (default 60)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), load average {os.getloadavg()[0]:.2f}")

    # the per-pixel reference (the definition, a Python loop)
    ref_img = rng.gamma(1.0, 1.0, (48, 48))
    t_ref, _ = best_of(lambda: refined_lee_reference(ref_img), 1)
    ref_mpix = ref_img.size / t_ref / 1e6
    print(f"per-pixel reference loop: {ref_mpix * 1e3:.1f} kPix/s")

    sizes = (512, 1024) if a.quick else (512, 1024, 4096)
    print(f"{'CPU image':>12} {'rule':>8} {'noise':>6} {'wall ms':>9} {'MPix/s':>8} {'CPU s':>7} {'x reference':>12}")
    for n in sizes:
        x = rng.gamma(1.0, 1.0, (n, n)).astype(np.float32)
        for rule, noise in (("closest", "enl"), ("sign", "enl"), ("closest", "local"), ("snap", "-")):
            if n == 4096 and (rule, noise) != ("closest", "enl"): continue
            reps = 1 if n == 4096 or rule == "snap" else (3 if a.quick else 5)
            wall, cpu = best_of(lambda: refined_lee(x, rule=rule, noise="enl" if noise == "-" else noise, threads=a.threads), reps)
            mpix = n * n / wall / 1e6
            print(f"{n:>7}x{n:<4} {rule:>8} {noise:>6} {wall * 1e3:9.1f} {mpix:8.1f} {cpu:7.2f} {mpix / ref_mpix:11.0f}x")

    threads_on_a_busy_machine(rng, a.busy_seconds, 3 if a.quick else 7)

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"CUDA: {torch.cuda.get_device_name(dev)}")
        for B, n in ((64, 512), (1, 4096)):
            xb = torch.from_numpy(rng.gamma(1.0, 1.0, (B, n, n)).astype(np.float32)).to(dev)
            def run():
                refined_lee(xb)
                torch.cuda.synchronize()
            wall, _ = best_of(run, 5)
            print(f"  batch {B} x {n}x{n}: {wall * 1e3:.1f} ms, {B * n * n / wall / 1e9:.2f} GPix/s")
    else:
        print("CUDA: not available here (the torch path is device-agnostic; run this script on a GPU host for the CUDA figure)")


BUSY = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end: pass\n"

def threads_on_a_busy_machine(rng, busy_seconds, reps):
    "1024^2 closest/enl with 1 and 2 threads (and the default), quiet and beside a process that spins on one core."
    x = rng.gamma(1.0, 1.0, (1024, 1024)).astype(np.float32)
    runs = (("default (1)", None), ("threads=1", 1), ("threads=2", 2))
    def table():
        return {lab: best_of(lambda: refined_lee(x, threads=t), reps)[0] for lab, t in runs}
    load0 = os.getloadavg()[0]
    quiet = table()
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(busy_seconds)])   # stops by itself after busy_seconds
    try:
        time.sleep(0.5)
        t0 = time.time(); loaded = table(); still = busy.poll() is None and time.time() - t0 < busy_seconds
    finally:
        busy.terminate(); busy.wait()
    print(f"threads on a busy machine: 1024x1024 closest/enl, best of {reps}; 'quiet' = without our busy process "
          f"(load average before {load0:.2f}: other jobs of this machine count too)")
    print(f"{'':>14} {'quiet ms':>9} {'busy ms':>9} {'busy/quiet':>11}")
    for lab, _ in runs:
        print(f"{lab:>14} {quiet[lab] * 1e3:9.1f} {loaded[lab] * 1e3:9.1f} {loaded[lab] / quiet[lab]:10.1f}x")
    if not still: print("  (the busy process ended before the busy figures were all taken: raise --busy-seconds)")


if __name__ == "__main__":
    main()
