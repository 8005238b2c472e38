"""Per-word Grad-CAM cost (13_gradcam): time per word map and peak memory, for the tiny models on this CPU, and for one
language-model layer of Qwen2-VL-7B's width (to scale the activation memory to a 7B model).

    .venv/bin/python bench/gradcam.py            # tiny models: batch 1 and 4, Grad-CAM (+ BLIP cross-attention, Qwen patch level)
    .venv/bin/python bench/gradcam.py --wide     # also a 2-layer LM of Qwen2-VL-7B's width, 448 px images (~3 GB, ~1 min)

Two memory figures per call: "saved" is what autograd keeps for the backward passes at the end of the forward (the sum
of the distinct storages its saved-tensor hook sees; layers under checkpointing save only their inputs, which the
checkpoint keeps outside that hook, so they read as ~0; the model's weights, which autograd also holds, are left out),
the part that grows with the model, sequence and batch;
"peak" is the process's peak resident memory during the call above what it held before (sampled every 2 ms; noise for
the tiny models, whose activations fit in memory the allocator already holds; on CUDA: torch.cuda.max_memory_allocated
above the memory allocated before). Prints figures; asserts nothing.
"""
import argparse, os, sys, threading, time
import numpy as np
import torch
from PIL import Image

os.environ.setdefault("SARLANG_PROGRESS", "0")
from sarlang_nb.models import load_vlm, Qwen2VLAdapter, train_tokenizer, _QWEN_SPECIALS
from sarlang_nb.gradcam import word_maps

ANSWER = "This SAR image shows two ships near the harbor and one bridge over the river."


def rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1])*os.sysconf("SC_PAGE_SIZE")


class Peak:
    "Peak memory above the start during a `with` block: resident memory on CPU, allocated memory on CUDA."
    def __init__(self, device): self.cuda = str(device).startswith("cuda")
    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated(); return self
        self.base = self.peak = rss(); self.on = True
        def poll():
            while self.on: self.peak = max(self.peak, rss()); time.sleep(0.002)
        self.t = threading.Thread(target=poll, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        if self.cuda: torch.cuda.synchronize(); self.bytes = torch.cuda.max_memory_allocated() - self.base
        else: self.on = False; self.t.join(); self.bytes = max(self.peak, rss()) - self.base


def images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.gamma(1.0, 60, (size, size))).clip(0, 255).astype(np.uint8)).convert("RGB") for _ in range(n)]


def saved_bytes(fn, model):
    "Run `fn()`; the bytes of the distinct storages autograd saved for backward during it, the model's own weights left out."
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen = {}
    def pack(t):
        try:
            st = t.untyped_storage()
            if st.data_ptr() not in own: seen[st.data_ptr()] = st.nbytes()
        except Exception: pass
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): fn()
    return sum(seen.values())


def measure(ad, ims, reps=3, answer=ANSWER, warm=True, **kw):
    "Median seconds per word map, the peak memory of a call and the activations saved by one batch (after a warm-up call)."
    if warm: word_maps(ad, ims[:1], answers=[answer], **kw)
    ts, peak, nw = [], 0, 0
    for _ in range(reps):
        with Peak(ad.device) as p:
            t = time.perf_counter(); r = word_maps(ad, ims, answers=[answer]*len(ims), **kw); ts.append(time.perf_counter() - t)
        peak = max(peak, p.bytes); nw = sum(len(m["words"]) for m in r)
    bs = kw.get("batch_size", 4)
    saved = saved_bytes(lambda: word_maps(ad, ims[:bs], answers=[answer]*min(bs, len(ims)), **kw), ad.model)
    return float(np.median(ts))/nw, peak, nw, saved


def tiny(device, n_images):
    print(f"tiny models, {device}, torch threads {torch.get_num_threads()}, answer of {len(ANSWER.split())} words, {n_images} images")
    print(f"{'model':12s} {'method':10s} {'level':7s} {'batch':>5s} {'ckpt':>5s} {'ms/word':>8s} {'saved MB':>9s} {'peak MB':>8s}")
    ims = images(n_images, 112)
    for name in ("qwen2-vl", "qwen2.5-vl", "llava-1.5", "blip"):
        ad = load_vlm(name, device=device)
        runs = [("gradcam", "lm", b, False) for b in (1, 4)] + [("gradcam", "lm", 4, True)]
        if name.startswith("qwen"): runs.append(("gradcam", "vision", 4, False))
        if name == "blip": runs.append(("crossattn", "lm", 4, False))
        for method, level, b, ck in runs:
            s, mem, nw, sv = measure(ad, ims, method=method, level=level, batch_size=b, checkpointing=ck)
            print(f"{name:12s} {method:10s} {level:7s} {b:5d} {str(ck):>5s} {1e3*s:8.2f} {sv/2**20:9.2f} {mem/2**20:8.1f}")
        del ad


def wide(device, size=448):
    """A Qwen2-VL whose language model has Qwen2-VL-7B's width (hidden 3584, MLP 18944, 28 heads, 4 KV heads) but 2 layers,
    reading 448 px images (256 merged tokens, as the 7B model): the activation memory the backward keeps per layer and image."""
    tok = train_tokenizer(_QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    cfg = Qwen2VLAdapter.tiny_config(tok, size)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads = 3584, 18944, 28, 4
    t.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    cfg.vision_config.hidden_size = 3584          # the merger's output = the LM's width
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    torch.manual_seed(0)
    m = Qwen2VLForConditionalGeneration(cfg).to(device=device, dtype=dtype).eval()
    ad = Qwen2VLAdapter(m, tok, Qwen2VLImageProcessorPil(min_pixels=size*size, max_pixels=size*size), image_max_pixels=size*size)
    n = sum(p.numel() for p in m.model.language_model.layers[0].parameters())
    e = ad.encode(images(1, size)[0], "Describe the content of this image in one sentence.", "Two ships near the harbor.")
    T = len(e["input_ids"])
    print(f"\n2-layer LM of Qwen2-VL-7B's width ({n/1e6:.0f}M parameters per layer), {size} px image, sequence of {T} tokens, {dtype}, {device}")
    ims = images(2, size)
    for b, ck in ((1, False), (2, False), (1, True)):
        s, mem, nw, sv = measure(ad, ims[:b], reps=1, answer="Two ships near the harbor.", warm=False, batch_size=b, checkpointing=ck)
        per = sv/(2*b)    # saved for backward, per layer and image (2 layers)
        print(f"  batch {b} checkpointing {str(ck):5s}: {s:6.2f} s/word, saved {sv/2**20:7.0f} MiB "
              f"({per/2**20:5.0f} MiB per layer and image, {per/T/1024:5.1f} KiB per token and layer), peak +{mem/2**30:5.2f} GiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu"); p.add_argument("--images", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--wide", action="store_true", help="also the 7B-width 2-layer LM (~3 GB of CPU memory)")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny models")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_tiny: tiny(a.device, a.images)
    if a.wide: wide(a.device)
