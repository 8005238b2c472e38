"""Data-parallel `sarlang-infer`: one process against `torchrun --nproc_per_node N` on the same demo test set.

    .venv/bin/python bench/infer_ddp.py [--nproc 2] [--images 40] [--batch 8] [--new-tokens 16] [--model qwen2-vl]

Each run is a fresh process (model loading and imports included, as a user sees it): the single process with
`--threads` threads, every torchrun rank with one. Prints wall times, samples/s of the generation itself (from
`inference_stats.json`), each rank's share, and whether the merged `generated_predictions.jsonl` equals the
single-process one byte for byte. Figures only (never pass/fail). On a machine with N cores or GPUs the
torchrun run should approach N times the samples/s; on this 2-core machine 2 ranks of 1 thread compete with 1
process of 2 threads.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time
from pathlib import Path


def run(cmd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode: sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="torchrun ranks (default 2)")
    p.add_argument("--images", type=int, default=40, help="demo images (30 %% are test: 4 rows each; default 40)")
    p.add_argument("--batch", type=int, default=8, help="--batch-size (default 8)")
    p.add_argument("--new-tokens", type=int, default=16, help="--max-new-tokens (default 16)")
    p.add_argument("--model", default="qwen2-vl", help="tiny model (default qwen2-vl)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the single process (default 1: the machine is shared)")
    p.add_argument("--device", default="cpu", help="--device (default cpu; cuda: each rank takes cuda:LOCAL_RANK)")
    a = p.parse_args(argv)
    from sarlang_nb.testing import demo_dataset
    env = {**os.environ, "SARLANG_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); files = demo_dataset(d/"data", a.images)
        args = ["--model", a.model, "--data", str(files["vqa_test"]), str(files["caption_test_concise"]), "--batch-size", str(a.batch),
                "--max-new-tokens", str(a.new_tokens), "--device", a.device]
        t1 = run([sys.executable, "-m", "sarlang_nb.inference", *args, "--out", str(d/"one")], {**env, "OMP_NUM_THREADS": str(a.threads)})
        with socket.socket() as so: so.bind(("127.0.0.1", 0)); port = so.getsockname()[1]
        tn = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.nproc), "--master_port", str(port),
                  "-m", "sarlang_nb.inference", *args, "--out", str(d/"ddp")], {**env, "OMP_NUM_THREADS": "1"})
        s1, sn = (json.loads((d/o/"inference_stats.json").read_text()) for o in ("one", "ddp"))
        same = (d/"one"/"generated_predictions.jsonl").read_bytes() == (d/"ddp"/"generated_predictions.jsonl").read_bytes()
    print(f"{a.model}, {s1['samples']} test rows, batch {a.batch}, {a.new_tokens} new tokens, device {a.device}")
    print(f"  1 process ({a.threads} threads): wall {t1:6.1f} s, generation {s1['seconds']:6.1f} s, {s1['samples_per_second']} samples/s")
    print(f"  torchrun x{a.nproc} (1 thread each): wall {tn:6.1f} s, generation {sn['seconds']:6.1f} s (slowest rank), {sn['samples_per_second']} samples/s")
    for r in sn["ranks"]: print(f"    rank {r['rank']}: {r['samples']} rows, {r['tokens']} tokens, {r['seconds']} s")
    print(f"  merged file identical to the single process's: {same}")


if __name__ == "__main__":
    main()
