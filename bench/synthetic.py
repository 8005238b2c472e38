"""Bench: the synthetic SAR world. Builds N scenes (default 500, 256 x 256, single look) into a temporary folder and
prints scenes/s for the whole build (generation + writing every file) and for generation alone, the size on disk,
and the 120-scene smoke world's build time. Usage: python bench/synthetic.py [N] [--size PX] [--quad-pol]"""
import argparse, os, sys, tempfile, time
from pathlib import Path
import numpy as np
os.environ.setdefault("SARLANG_PROGRESS", "0")
from sarlang_nb.synthetic import build_world, generate_scene, plan_world, CLASSES

def du(root):
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("n", nargs="?", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quad-pol", action="store_true")
    a = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        info = build_world(Path(d)/"w", n_scenes=a.n, size=a.size, quad_pol=a.quad_pol, show_progress=False)
        dt = time.perf_counter() - t
        c = info["counts"]
        print(f"build_world: {a.n} scenes of {a.size}x{a.size}{' quad-pol' if a.quad_pol else ''} in {dt:.1f} s = "
              f"{a.n/dt:.1f} scenes/s; {du(Path(d)/'w')/1e6:.0f} MB; {sum(c['objects'].values())} objects {c['objects']}")
        plan = plan_world(a.n, 0)
        t = time.perf_counter()
        for i, p in enumerate(plan[:200]):
            generate_scene(np.random.default_rng([0, i, CLASSES.index(p["primary"])]), p["primary"], a.size, 1.0, a.quad_pol)
        dt = time.perf_counter() - t
        print(f"generate_scene alone (no files): {min(200, a.n)/dt:.1f} scenes/s")
        t = time.perf_counter()
        build_world(Path(d)/"smoke", n_scenes=120, show_progress=False)
        print(f"smoke world (120 scenes of 256x256): {time.perf_counter() - t:.1f} s")

if __name__ == "__main__":
    sys.exit(main())
