"""Benchmark of sarlang_nb.retrieval: the vectorised retrieval metric against its brute-force reference, and the
training speed of the smoke profile's tiny CLIP.

Prints figures, never pass/fail.

    python bench/retrieval.py                          # 10,000 images x 50,000 captions; reference on a sample, extrapolated
    python bench/retrieval.py --images 2000 --texts 10000
    python bench/retrieval.py --skip-train             # metrics only
    python bench/retrieval.py --threads 1              # one BLAS/torch thread (steadier when other jobs share the cores)
"""
import argparse, os, sys, time, tempfile, platform


from _timing import best   # bench/_timing.py


def bench_metrics(a, np, R):
    rng = np.random.default_rng(0)
    nI, nT, d = a.images, a.texts, 64
    I = rng.standard_normal((nI, d), dtype=np.float32); T = rng.standard_normal((nT, d), dtype=np.float32)
    I /= np.linalg.norm(I, axis=1, keepdims=True); T /= np.linalg.norm(T, axis=1, keepdims=True)
    ti = rng.integers(0, nI, nT)
    t = time.perf_counter(); sim = I @ T.T; t_mm = time.perf_counter() - t
    print(f"similarity matrix {nI:,} x {nT:,} float32 ({sim.nbytes/2**30:.1f} GiB): matmul {t_mm:.2f} s")
    m, t_fast = best(lambda: R.retrieval_metrics(sim, ti), a.repeat)
    print(f"  retrieval_metrics (community, ties pessimistic): {t_fast:.2f} s   mean recall {m['mean_recall']:.3f}")
    for ties in ("optimistic", "index"):
        _, t = best(lambda: R.retrieval_metrics(sim, ti, ties=ties), 1)
        print(f"  retrieval_metrics (community, ties {ties}): {t:.2f} s")
    no, nt = min(nI, a.openclip_pairs//5), min(nT, a.openclip_pairs)   # OpenCLIP's protocol is O(pairs^2): timed on a subset
    _, t = best(lambda: R.retrieval_metrics(sim[:no, :nt], ti[:nt] % no, protocol="openclip"), 1)
    print(f"  retrieval_metrics (openclip, {nt:,} pairs over {no:,} images; O(pairs^2)): {t:.2f} s")
    m2, t_emb = best(lambda: R.embedding_metrics(I, T, ti), a.repeat)
    print(f"  embedding_metrics (blocks of 1024 queries, no full matrix): {t_emb:.2f} s (matmul included)")
    # the reference: one Python sort per query; timed on a sample of queries and extrapolated to all of them
    k = a.ref_queries
    sub_I = sim[:k]
    t = time.perf_counter()
    caps = {}
    for j, i in enumerate(ti): caps.setdefault(int(i), set()).add(j)
    for i in range(k):
        order = sorted(range(nT), key=lambda c, s=sub_I[i].tolist(), p=caps.get(i, set()): (-s[c], c in p))
        next((r for r, c in enumerate(order) if c in caps.get(i, set())), -1)
    per_q = (time.perf_counter() - t)/k
    est = per_q*nI + per_q*(nI/nT)*nT   # image queries sort nT candidates; text queries sort nI (cost ~ candidates)
    print(f"  brute_force_ranks: {per_q*1e3:.1f} ms per image query ({nT:,} candidates, {k} timed); "
          f"both directions extrapolated ~{est/60:.0f} min -> the vectorised metric is ~{est/t_fast:,.0f}x faster")
    # agreement on a subset both can do
    s = sim[:300, :1500]; tsub = rng.integers(0, 300, 1500)
    f, r = R.retrieval_ranks(s, tsub), R.brute_force_ranks(s, tsub)
    print(f"  check on a 300 x 1,500 slice: fast == reference: {bool((f[0] == r[0]).all() and (f[1] == r[1]).all())}")


def bench_train(a, R):
    import torch, numpy as np
    from PIL import Image
    from sarlang_nb.records import write_caption_csv
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "ds"); os.makedirs(f"{root}/SARimages")
        rng = np.random.default_rng(0); recs = []
        for i in range(64):
            Image.fromarray((rng.gamma(1.0, 40, (256, 256))).clip(0, 255).astype(np.uint8)).save(f"{root}/SARimages/{i:07d}.png")
            recs.append(dict(image=f"SARimages/{i:07d}.png", caption=f"A SAR image with {i % 7} ships near the coast.", style="concise", split="train"))
        f = f"{root}/Text/caption/Caption-training.csv"; os.makedirs(os.path.dirname(f)); write_caption_csv(f, recs)
        for mode in ("full", "lora"):
            info = R.finetune_clip(f, os.path.join(d, mode), mode=mode, max_steps=a.steps, batch_size=16, save_steps=10**6, logging_steps=10**6)
            print(f"tiny CLIP ({mode}, batch 16, 64-px images, Trainer + collator + image loading): {info['steps']} steps in "
                  f"{info['train_runtime_s']:.2f} s = {info['steps_per_second']:.2f} steps/s ({16*info['steps_per_second']:.0f} pairs/s)")
        b = R.tiny_clip(); m = b.model.train()
        px = torch.randn(16, 3, 64, 64); tok = b.tokenize([r["caption"] for r in recs[:16]])
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        def step():
            out = m(pixel_values=px, **tok); loss = R.clip_loss(out.image_embeds, out.text_embeds, m.logit_scale)
            opt.zero_grad(); loss.backward(); opt.step()
        step()
        _, t = best(lambda: [step() for _ in range(20)], 3)
        print(f"tiny CLIP bare forward+backward+AdamW step (batch 16, tensors ready): {t/20*1e3:.1f} ms = {20/t:.1f} steps/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000); ap.add_argument("--texts", type=int, default=50_000)
    ap.add_argument("--ref-queries", type=int, default=20, help="image queries timed for the brute-force reference")
    ap.add_argument("--openclip-pairs", type=int, default=10_000, help="pairs for timing the OpenCLIP protocol")
    ap.add_argument("--repeat", type=int, default=2); ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int); ap.add_argument("--skip-train", action="store_true"); ap.add_argument("--skip-metrics", action="store_true")
    a = ap.parse_args()
    if a.threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ[v] = str(a.threads)
    os.environ.setdefault("SARLANG_PROGRESS", "0")
    import numpy as np, torch
    if a.threads: torch.set_num_threads(a.threads)
    from sarlang_nb import retrieval as R
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    if not a.skip_metrics: bench_metrics(a, np, R)
    if not a.skip_train: bench_train(a, R)


if __name__ == "__main__":
    main()
