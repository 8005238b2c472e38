"""Throughput of the tiny smoke models on this machine (CPU): LoRA training samples/s and greedy inference tokens/s.

    .venv/bin/python bench/models.py [--models qwen2-vl blip] [--steps 20] [--threads 1]

Training: the smoke recipe's trainable set (LoRA r=8 on the language model + embeddings/output layer), AdamW,
batch 8 of demo SAR examples (112 px), forward+backward+step, timed after 3 warm-up steps.
Inference: batched greedy generation (batch 8, exactly 32 new tokens each: min_new_tokens = max_new_tokens).
Prints figures only (never pass/fail).
"""
import argparse, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault("SARLANG_PROGRESS", "0")
import torch


def bench_model(name, files, steps, batch, new_tokens):
    from sarlang_nb.models import load_vlm
    from sarlang_nb.finetune import apply_lora, load_examples
    ex = load_examples([files["vqa_train"], files["caption_train"]])
    ad = load_vlm(name)
    pm = apply_lora(ad, train_embeddings=True); pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-3)
    batches = [ad.collate([ad.encode(e["image"], e["prompt"], e["answer"]) for e in ex[i*batch % len(ex):][:batch]])
               for i in range(steps + 3)]
    for i, b in enumerate(batches):
        if i == 3: t0 = time.perf_counter()
        loss = pm(**b).loss; loss.backward(); opt.step(); opt.zero_grad()
    train_sps = steps*batch/(time.perf_counter() - t0)
    pm.eval()
    test = load_examples(files["vqa_test"])[:batch]
    enc = [ad.encode(e["image"], e["prompt"]) for e in test]
    b = ad.to_device(ad.collate(enc, side="left")); b.pop("labels")
    with torch.no_grad():
        if name == "blip":   # BLIP generates one example at a time (see 09_models)
            t0 = time.perf_counter()
            for e in enc:
                c = ad.collate([e]); pm.generate(pixel_values=c["pixel_values"], input_ids=c["input_ids"], attention_mask=c["attention_mask"],
                                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        else:
            pm.generate(**b, max_new_tokens=2, do_sample=False, pad_token_id=ad.pad_id)   # warm-up
            t0 = time.perf_counter()
            pm.generate(**b, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=ad.pad_id)
    tok_s = len(enc)*new_tokens/(time.perf_counter() - t0)
    n = sum(p.numel() for p in pm.parameters()); nt = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    return dict(params=n, trainable=nt, prompt_tokens=b["input_ids"].shape[1], train_samples_s=train_sps, infer_tokens_s=tok_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["qwen2-vl", "qwen2.5-vl", "llava-1.5", "blip"])
    p.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    p.add_argument("--batch", type=int, default=8, help="batch size for training and inference (default 8)")
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens per example (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    from sarlang_nb.testing import demo_dataset
    with tempfile.TemporaryDirectory() as d:
        files = demo_dataset(Path(d), 40)
        print(f"tiny models on CPU ({a.threads} thread(s)), batch {a.batch}, torch {torch.__version__}")
        print(f"{'model':12s} {'params':>9s} {'trainable':>10s} {'prompt tok':>10s} {'train samples/s':>16s} {'infer tokens/s':>15s}")
        for m in a.models:
            r = bench_model(m, files, a.steps, a.batch, a.new_tokens)
            print(f"{m:12s} {r['params']/1e6:8.2f}M {r['trainable']/1e6:9.2f}M {r['prompt_tokens']:10d} "
                  f"{r['train_samples_s']:16.1f} {r['infer_tokens_s']:15.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
