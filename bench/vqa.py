"""Bench: VQA from boxes. Makes a SARDet-style COCO file (default 100,000 images), streams the QA pairs to jsonl and
prints the rate and peak memory. Usage: python bench/vqa.py [N_IMAGES] [--keep DIR]"""
import json, random, resource, sys, tempfile, time
from pathlib import Path
from sarlang_nb.vqa import SARDET_CLASSES, vqa_records, write_records, load_coco

def make_coco(path, n_images, seed=0):
    "A synthetic COCO detection file: 1-6 boxes of 1-3 categories per image (mean ~3 boxes)."
    rng = random.Random(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        W, H = rng.choice([(512, 512), (800, 800), (1000, 600)])
        images.append({"id": i, "file_name": f"{i:07d}.jpg", "width": W, "height": H})
        cats = rng.sample(range(6), rng.randint(1, 3))
        for _ in range(rng.randint(1, 6)):
            w, h = rng.uniform(8, 80), rng.uniform(8, 80)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": rng.choice(cats),
                         "bbox": [round(rng.uniform(0, W - w), 1), round(rng.uniform(0, H - h), 1), round(w, 1), round(h, 1)],
                         "area": w*h, "iscrowd": 0})
    Path(path).write_text(json.dumps({"images": images, "annotations": anns,
                                      "categories": [{"id": i, "name": n} for i, n in enumerate(SARDET_CLASSES)]}))
    return len(anns)

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 100_000
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter(); nb = make_coco(d/"train.json", n)
        print(f"made {n:,} images / {nb:,} boxes ({(d/'train.json').stat().st_size/1e6:.0f} MB) in {time.perf_counter()-t:.1f} s")
        t = time.perf_counter(); data = load_coco(d/"train.json"); tl = time.perf_counter() - t
        print(f"load_coco: {tl:.1f} s")
        for fmt in ("jsonl", "sharegpt"):
            t = time.perf_counter()
            q = write_records(vqa_records(data, seed=0, split="train"), d/f"out.{fmt}", fmt)
            dt = time.perf_counter() - t
            print(f"{fmt:8s}: {q:,} QA pairs in {dt:.1f} s = {q/dt:,.0f} QA/s (generation + writing, one core); "
                  f"with loading: {q/(dt+tl):,.0f} QA/s; file {(d/f'out.{fmt}').stat().st_size/1e6:.0f} MB")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MB")

if __name__ == "__main__": main()
