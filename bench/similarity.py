"""Benchmark of sarlang_nb.similarity: the closed form (O(N d^2)) against the blocked pairwise reference (O(N^2 d)).

Prints figures, never pass/fail.

    python bench/similarity.py                    # N=20,000 d=512 both ways; then the full SARLANG-1M scale
    python bench/similarity.py --fraction 0.25    # time a quarter of the full-scale batches and extrapolate
    python bench/similarity.py --skip-full        # only the N=20,000 comparison
    python bench/similarity.py --threads 1        # BLAS on one thread (steadier when other jobs share the cores)
"""
import argparse, os, sys, time, platform


np = overall_similarity = pairwise_similarity = SimilarityAccumulator = None


def _imports():
    "Import numpy and the package after the thread settings are in the environment."
    global np, overall_similarity, pairwise_similarity, SimilarityAccumulator
    import numpy
    from sarlang_nb.similarity import overall_similarity as o, pairwise_similarity as p, SimilarityAccumulator as A
    np, overall_similarity, pairwise_similarity, SimilarityAccumulator = numpy, o, p, A


from _timing import best   # bench/_timing.py


def compare(n, d, block, repeat=3, seed=0):
    rng = np.random.default_rng(seed)
    # non-negative, correlated features like VGG fc7 (ReLU outputs share a common direction)
    x = np.abs(rng.standard_normal((n, d), dtype=np.float32) + 0.5 * rng.standard_normal(d, dtype=np.float32))
    fast, t_fast = best(lambda: overall_similarity(x), repeat)
    ref, t_ref = best(lambda: pairwise_similarity(x, block=block), repeat)
    print(f"N={n:,} d={d} float32 (best of {repeat} runs each)")
    print(f"  closed form       {t_fast:8.3f} s   mean {fast[0]:.9f}  variance {fast[1]:.9e}")
    print(f"  blocked pairwise  {t_ref:8.3f} s   mean {ref[0]:.9f}  variance {ref[1]:.9e}   (block {block})")
    print(f"  speed-up x{t_ref / t_fast:.1f};  |diff| mean {abs(fast[0]-ref[0]):.1e}, variance {abs(fast[1]-ref[1]):.1e}")
    return t_ref / t_fast


def full_scale(n, d, batch, fraction, seed=0):
    rng = np.random.default_rng(seed)
    nb = -(-n // batch)
    todo = max(1, round(nb * fraction))
    acc, t_upd, rows = SimilarityAccumulator(d), 0.0, 0
    base = rng.standard_normal(d, dtype=np.float32)
    for i in range(todo):
        m = min(batch, n - i * batch)
        b = np.abs(rng.standard_normal((m, d), dtype=np.float32) + 0.5 * base)   # generation is not timed
        t = time.perf_counter(); acc.update(b); t_upd += time.perf_counter() - t
        rows += m
    t = time.perf_counter(); mean, var = acc.result(); t_res = time.perf_counter() - t
    est = t_upd * n / rows + t_res
    what = "measured" if rows == n else f"extrapolated linearly from {rows:,} of {n:,} rows ({todo}/{nb} batches)"
    print(f"N={n:,} d={d:,} float32 (SARLANG-1M scale), batches of {batch:,}: float32 features, float64 sums")
    print(f"  closed form {est:8.1f} s  ({what}; result() {t_res:.2f} s)  -> {est/60:.2f} min; mean {mean:.6f} var {var:.3e}")
    return est


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000); ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--block", type=int, default=2048, help="block size of the pairwise reference")
    ap.add_argument("--full-n", type=int, default=118_331); ap.add_argument("--full-d", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8192, help="rows per batch at full scale")
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of full-scale batches to time (extrapolate)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing of the N=20,000 comparison (the best is shown)")
    ap.add_argument("--threads", type=int, help="BLAS/OpenMP threads (default: the libraries' own choice)")
    ap.add_argument("--skip-full", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"): os.environ[k] = str(a.threads)
    _imports()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}, BLAS threads {a.threads or 'default'}")
    compare(a.n, a.d, a.block, a.repeat)
    if not a.skip_full: full_scale(a.full_n, a.full_d, a.batch, a.fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
