"""Throughput of the dataset-format readers/writers at release scale (prints figures; never pass/fail).

    python bench/formats.py [N]      # N VQA records and N/4 captions (default 200,000)

The real SARLANG-1M release has about 1.1 M VQA records; multiply the times below accordingly.
"""
import os, sys, time, tempfile, resource, tracemalloc
from pathlib import Path
os.environ.setdefault("SARLANG_PROGRESS", "0")
from sarlang_nb import formats as F, core, prompts, records


def main(n=200_000):
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings are noisy on a shared machine)")
    apps = prompts.APPLICATIONS
    vqa = ({"image": f"SARimages/{i:07d}.png", "question": f"How many ships are in the image number {i}?", "answer": str(i % 9),
            "application": apps[i % 7], "source": "sardet" if i % 2 else "paired", "image_id": f"{i:07d}",
            "split": "train" if i % 10 < 7 else "test", "qtype": "count"} for i in range(n))
    caps = ({"image": f"SARimages/City_{i}.png", "caption": "A dense urban area with a river crossing it from north to south, "
             "bridges, and farmland in the east. " * 3, "style": "complex" if i % 2 else "concise", "source": "paired",
             "image_id": f"City_{i}", "split": "train" if i % 10 < 7 else "test"} for i in range(n // 4))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root/"SARimages").mkdir()
        t = time.perf_counter(); counts = records.write_release(root, caps, vqa); tw = time.perf_counter() - t
        size = sum(f.stat().st_size for f in (root/"Text").rglob("*") if f.is_file())
        print(f"write_release: {n:,} VQA + {n//4:,} captions (CSV + JSON) in {tw:.1f} s; {size/2**20:.0f} MiB of text")
        big = root/"Text/VQA/train/SARVQA1_train.json"
        m = counts["Text/VQA/train/SARVQA1_train.json"]
        for label, kw in [("iter_vqa, path checks incl. symlinks", {}), ("iter_vqa, symlink check off", {"allow_symlinks_out": True})]:
            t = time.perf_counter(); k = sum(1 for _ in records.iter_vqa(big, **kw)); dt = time.perf_counter() - t
            print(f"{label}: {k:,} records ({big.stat().st_size/2**20:.0f} MiB) in {dt:.2f} s = {k/dt:,.0f} rec/s")
        tracemalloc.start(); sum(1 for _ in records.iter_vqa(big)); peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
        print(f"peak Python memory while streaming that file: {peak/2**20:.1f} MiB (file {big.stat().st_size/2**20:.0f} MiB)")
        t = time.perf_counter(); k = sum(1 for _ in core.iter_json_records(big)); dt = time.perf_counter() - t
        print(f"iter_json_records alone (streaming JSON array parse): {k/dt:,.0f} rec/s")
        cap = root/"Text/caption/Caption-training.csv"
        t = time.perf_counter(); k = sum(1 for _ in records.iter_captions(cap)); dt = time.perf_counter() - t
        print(f"iter_captions (CSV): {k:,} records in {dt:.2f} s = {k/dt:,.0f} rec/s")
        t = time.perf_counter(); rel = records.load_release(root); dt = time.perf_counter() - t
        print(f"load_release: {len(rel['vqa']):,} VQA + {len(rel['captions']):,} captions in {dt:.1f} s; "
              f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
