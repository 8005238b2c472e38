"""Memory and time of `load_examples` at release scale: 1.3 M VQA records in one release-shaped sharegpt JSON.

    .venv/bin/python bench/load_examples.py [--records 1300000] [--variants old new]

Writes a synthetic `Text/VQA/train/SARVQA2_train.json` (sharegpt `messages` + `images`, pretty-printed like the
release, ~370 bytes a record) into a temporary folder, then loads it in one fresh process per variant:
`old` (the list of dicts `load_examples` returned before, as `tests/test_finetune.py` keeps it) and `new`
(`sarlang_nb.finetune.load_examples`: the examples in columns). Prints, per variant: build seconds, peak RSS of the
process (getrusage), what the examples hold once built (RSS after minus before, after a gc), random access
(microseconds per example over 20,000 random indices). Figures only, never pass/fail.
"""
import argparse, gc, json, os, random, resource, subprocess, sys, tempfile, time
from pathlib import Path

CLASSES = ("ship", "aircraft", "car", "tank", "bridge", "harbor")
POS = ("top left", "top right", "bottom left", "bottom right", "center")


def write_release(path, n, seed=0):
    "A sharegpt VQA file of `n` records shaped like the release's (13 questions per image)."
    r = random.Random(seed); path.parent.mkdir(parents=True, exist_ok=True)
    qs = [(f"How many {c}s are there in the image", None) for c in CLASSES] + \
         [(f"Is there any {c} in the {p} of the image", ("yes", "no")) for c in CLASSES for p in POS] + \
         [(f"What is the category of the objects in the {p} of the image", CLASSES) for p in POS] + \
         [("Where is the largest ship located in the image", POS), ("What is the main object in this SAR image", CLASSES)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            q, answers = r.choice(qs)
            a = str(r.randint(0, 40)) if answers is None else r.choice(answers)
            img = f"SARimages/P{i // 13:06d}_{(i // 13) % 7 * 800}_{(i // 13) % 5 * 800}.png"
            f.write('  {\n    "id": "SARVQA2_train_' + f"{i:07d}" + '",\n    "messages": [\n      {\n        "content": "<image>' + q + '?",\n        "role": "user"\n      },\n'
                    '      {\n        "content": ' + json.dumps(a) + ',\n        "role": "assistant"\n      }\n    ],\n'
                    '    "images": [\n      "' + img + '"\n    ]\n  }' + (",\n" if i < n - 1 else "\n"))
        f.write("]\n")


def _rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


def _old(path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"tests"))
    from sarlang_nb.finetune import read_records, _image_path
    from sarlang_nb.models import record_example
    out = []
    recs, root = read_records(path)
    for k, r in enumerate(recs):
        e = record_example(r, True); e["image_rel"] = e["image"]; e["data_file"] = str(path); e["row"] = k + 1
        e["image"] = str(_image_path(e["image"], [root])); out.append(e)
    del recs
    return out


def measure(variant, path):
    "One variant in this (fresh) process; prints one JSON line."
    import sarlang_nb.finetune as ft
    gc.collect(); base = _rss_mb()
    t = time.perf_counter()
    ex = _old(path) if variant == "old" else ft.load_examples(path)
    build = time.perf_counter() - t
    gc.collect(); held = _rss_mb() - base
    r = random.Random(1); idx = [r.randrange(len(ex)) for _ in range(20000)]
    t = time.perf_counter()
    for i in idx: ex[i]
    access = (time.perf_counter() - t)/len(idx)*1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024
    print(json.dumps(dict(variant=variant, examples=len(ex), build_s=round(build, 1), peak_rss_mb=round(peak), baseline_rss_mb=round(base),
                          held_mb=round(held), columns_mb=round(ex.nbytes()/2**20, 1) if variant == "new" else None,
                          access_us=round(access, 1), first=ex[0])), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_300_000, help="VQA records in the synthetic file (default 1,300,000)")
    p.add_argument("--variants", nargs="+", default=["old", "new"], choices=["old", "new"])
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)   # internal: VARIANT FILE, in a fresh process
    a = p.parse_args(argv)
    if a.measure: return measure(a.measure[0], Path(a.measure[1]))
    with tempfile.TemporaryDirectory() as d:
        f = Path(d)/"Text"/"VQA"/"train"/"SARVQA2_train.json"
        t = time.perf_counter(); write_release(f, a.records)
        print(f"{a.records:,} sharegpt VQA records: {f.stat().st_size/2**20:.0f} MiB written in {time.perf_counter() - t:.1f} s", flush=True)
        res = {}
        for v in a.variants:
            out = subprocess.run([sys.executable, __file__, "--measure", v, str(f)], capture_output=True, text=True)
            if out.returncode: print(f"{v}: failed\n{out.stderr[-2000:]}"); continue
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{'variant':8s} {'examples':>10s} {'build s':>8s} {'peak RSS MB':>12s} {'held MB':>8s} {'columns MB':>11s} {'access us':>10s}")
        for v, r in res.items():
            print(f"{v:8s} {r['examples']:10,d} {r['build_s']:8.1f} {r['peak_rss_mb']:12d} {r['held_mb']:8d} {str(r['columns_mb'] or '-'):>11s} {r['access_us']:10.1f}")
        if len(res) == 2: print("same first example:", res["old"]["first"] == res["new"]["first"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
