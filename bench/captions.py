"""Bench: caption metrics (sarlang_nb.metrics.evaluate_captions: BLEU-1..4, ROUGE_L, CIDEr) for 13,682 captions
(the size of a SARLANG-1M caption test set), from a generated_predictions.jsonl file to the summary JSON, in the
official mode (raw strings) and the COCO mode (PTBTokenizer, Java). Target: under 30 s. Prints figures only.

    .venv/bin/python bench/captions.py [--n 13682] [--meteor]
"""
import os, sys, time, json, random, argparse, tempfile, shutil
from pathlib import Path
os.environ.setdefault("SARLANG_PROGRESS", "0")
from sarlang_nb.metrics import evaluate_captions

VOCAB = ("the a an of in on near with and two three several many large small dark bright ship ships boat harbor port "
         "dock aircraft airport runway tank tanks car cars road bridge river sea water coast field farmland building "
         "buildings urban area scene image shows contains along beside parked moored scattered dense sparse").split()

def caption(rng): return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(8, 30))).capitalize() + "."

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=13682); p.add_argument("--meteor", action="store_true")
    a = p.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d)/"generated_predictions.jsonl"
        with open(f, "w") as o:
            for i in range(a.n):
                ref = caption(rng); w = ref.split(); k = rng.randint(2, len(w))
                pred = " ".join(w[:k]) if i % 3 else caption(rng)
                o.write(json.dumps({"prompt": "<image>Describe the content of this image in one sentence.", "predict": pred, "label": ref}) + "\n")
        modes = ["official"] + (["coco"] if shutil.which("java") else [])
        for mode in modes:
            t0 = time.perf_counter()
            s = evaluate_captions(f, tokenize=mode, meteor=a.meteor, json_out=Path(d)/"m.json", per_sample=Path(d)/"per.csv")
            dt = time.perf_counter() - t0
            print(f"{mode:8s}: {a.n} captions in {dt:.1f} s ({a.n/dt:.0f} captions/s; target < 30 s)  "
                  + " ".join(f"{k}={s[k]:.3f}" for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr") if k in s))
        if not shutil.which("java"): print("java not found: the coco mode (PTBTokenizer) was not timed")

if __name__ == "__main__": main()
