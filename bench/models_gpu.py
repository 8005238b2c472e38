"""Qwen2.5-VL-7B on one GPU, no download: the published architecture with random bf16 weights.

    python bench/models_gpu.py [--steps 10] [--batch-sizes 1 4 8 16] [--new-tokens 64] [--json out.json]
    python bench/models_gpu.py --dry-run-cpu      # a tiny config on CPU: checks the script itself

Builds Qwen2_5_VLForConditionalGeneration from Qwen2.5-VL-7B-Instruct's published config (hard-coded below: text
hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064; vision depth 32, hidden 1280, ...)
directly on CUDA in bf16 with random weights, wraps it with LoRA r=8 on the language model's linear layers (the
paper recipe's targets, `sarlang_nb.models.Qwen25VLAdapter.lm_linear_pattern`; vision tower frozen), and measures

  1. training: batch 1, one 512x512 image (324 image tokens after 2x2 merging) + a short prompt + a 32-token answer,
     AdamW on the LoRA weights, forward+backward+step; samples/s and peak GPU memory;
  2. inference: batched greedy generation with the adapter attached (as `sarlang-infer --adapter`), exactly
     --new-tokens tokens per sample (min_new_tokens = max_new_tokens); generated tokens/s and peak memory per batch size.

Random weights make the numbers about compute and memory only, never about quality. Exits 0 with a message when
CUDA is absent; an out-of-memory batch size is reported and skipped. Prints figures only (never pass/fail).
"""
import argparse, json, os, platform, re, sys, time

QWEN25_VL_7B = dict(   # Qwen/Qwen2.5-VL-7B-Instruct config.json (published values)
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000,
                     rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                     bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=False)

TINY = dict(   # --dry-run-cpu: same code path, demo sizes
    text_config=dict(QWEN25_VL_7B["text_config"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_window_layers=2,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
    vision_config=dict(QWEN25_VL_7B["vision_config"], depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                       out_hidden_size=64, fullatt_block_indexes=[1]),
    **{k: v for k, v in QWEN25_VL_7B.items() if k not in ("text_config", "vision_config")})

IM_START, IM_END, V_START, V_END, IMG = 151644, 151645, 151652, 151653, 151655


def log(*a): print(*a, flush=True)


def build(cfg_dict, device, dtype):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(**cfg_dict)
    old = torch.get_default_dtype(); torch.set_default_dtype(dtype)
    try:
        with torch.device(device): model = Qwen2_5_VLForConditionalGeneration(cfg)   # initialised on the device
    finally: torch.set_default_dtype(old)
    return model.to(dtype)


def image_inputs(size, device, dtype):
    import numpy as np, torch
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    ip = Qwen2VLImageProcessorPil(min_pixels=size*size//2, max_pixels=size*size)
    im = Image.fromarray((np.random.default_rng(0).random((size, size, 3))*255).astype("uint8"))
    f = ip(images=[im], return_tensors="pt")
    return f["pixel_values"].to(device, dtype), f["image_grid_thw"].to(device)


def sequence(n_img, n_prompt, n_answer, g):
    "Token ids of one chat turn: <|im_start|>user <vision_start> image pads <vision_end> prompt <|im_end|> <|im_start|>assistant answer."
    import torch
    txt = lambda n: torch.randint(1000, 150000, (n,), generator=g).tolist()
    prompt = [IM_START] + txt(2) + [V_START] + [IMG]*n_img + [V_END] + txt(n_prompt) + [IM_END, IM_START] + txt(2)
    return prompt, txt(n_answer) + [IM_END]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed training steps after 3 warm-up steps (default 10)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="inference batch sizes (default 1 4 8 16)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per sample (default 64)")
    p.add_argument("--image-size", type=int, default=512, help="square image side in pixels (default 512)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing during training (LLaMA-Factory's default)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--dry-run-cpu", action="store_true", help="tiny config on CPU (checks the script, figures meaningless)")
    a = p.parse_args(argv)
    try:
        import torch, transformers, peft
    except ImportError as e:
        log(f"models_gpu: cannot import {e.name}; install torch, transformers and peft"); return 0
    if a.dry_run_cpu:
        device, dtype, cfg, a.image_size = "cpu", torch.float32, TINY, min(a.image_size, 112)
    else:
        if not torch.cuda.is_available():
            log("models_gpu: CUDA is not available on this machine; nothing measured. Run it on a GPU host "
                "(or `--dry-run-cpu` to check the script)."); return 0
        device, dtype, cfg = "cuda", torch.bfloat16, QWEN25_VL_7B
    from peft import LoraConfig, get_peft_model
    try: from sarlang_nb.models import Qwen25VLAdapter; pattern = Qwen25VLAdapter.lm_linear_pattern
    except ImportError: pattern = r"(.*\.)?language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"

    res = dict(device=(torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"),
               torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
               model="Qwen2.5-VL-7B architecture, random weights", dtype=str(dtype), image_size=a.image_size)
    log(f"== {res['model']} | {res['device']} | torch {res['torch']} transformers {res['transformers']} peft {res['peft']}")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try: model = build(cfg, device, dtype)
    except torch.cuda.OutOfMemoryError as e:
        log(f"models_gpu: out of memory while building the model: {e}"); return 0
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["params_b"] = round(sum(p.numel() for p in model.parameters())/1e9, 3)
    targets = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n))
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    res["lora_targets"] = len(targets); res["trainable_m"] = round(sum(p.numel() for p in pm.parameters() if p.requires_grad)/1e6, 2)
    log(f"built in {res['build_s']} s: {res['params_b']} B params; LoRA r=8 on {len(targets)} language-model linear layers "
        f"({res['trainable_m']} M trainable); vision tower frozen")
    if device == "cuda": log(f"weights resident: {torch.cuda.memory_allocated()/2**30:.1f} GiB")

    pix, grid = image_inputs(a.image_size, device, dtype)
    n_img = int(grid.prod()) // 4
    g = torch.Generator().manual_seed(0)
    res["image_tokens"] = n_img
    # ---- training: batch 1 -------------------------------------------------------------------------
    prompt, answer = sequence(n_img, 24, 32, g)
    ids = torch.tensor([prompt + answer], device=device)
    labels = torch.tensor([[-100]*len(prompt) + answer], device=device)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, pixel_values=pix, image_grid_thw=grid,
                 mm_token_type_ids=(ids == IMG).long())
    res["train_seq_len"] = ids.shape[1]
    if a.grad_ckpt: pm.gradient_checkpointing_enable(); pm.enable_input_require_grads()
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    try:
        if device == "cuda": torch.cuda.reset_peak_memory_stats()
        for i in range(3 + a.steps):
            if i == 3: sync(); t0 = time.perf_counter()
            loss = pm(**batch).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(); dt = time.perf_counter() - t0
        res["train_samples_per_s"] = round(a.steps/dt, 3)
        res["train_peak_gib"] = round(torch.cuda.max_memory_allocated()/2**30, 2) if device == "cuda" else None
        log(f"train : batch 1, {ids.shape[1]} tokens ({n_img} image), grad-ckpt {a.grad_ckpt}: "
            f"{res['train_samples_per_s']} samples/s ({dt/a.steps*1000:.0f} ms/step), peak {res['train_peak_gib']} GiB, loss {loss.item():.2f}")
    except torch.cuda.OutOfMemoryError:
        res["train_samples_per_s"] = "OOM"; log("train : out of memory at batch 1")
    del opt; pm.zero_grad(set_to_none=True)
    if device == "cuda": torch.cuda.empty_cache()
    # ---- inference: batched greedy generation ------------------------------------------------------------------
    pm.eval(); res["inference"] = []
    for B in a.batch_sizes:
        seqs = [sequence(n_img, 24, 0, g)[0] for _ in range(B)]
        ids = torch.tensor(seqs, device=device)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix.repeat(B, 1),
                  image_grid_thw=grid.repeat(B, 1), mm_token_type_ids=(ids == IMG).long())
        try:
            if device == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                pm.generate(**kw, max_new_tokens=2, do_sample=False, pad_token_id=151643)    # warm-up
                sync(); t0 = time.perf_counter()
                out = pm.generate(**kw, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                                  pad_token_id=151643, eos_token_id=None)
                sync(); dt = time.perf_counter() - t0
            n_new = (out.shape[1] - ids.shape[1])*B
            r = dict(batch=B, new_tokens=n_new, seconds=round(dt, 3), tokens_per_s=round(n_new/dt, 1),
                     samples_per_s=round(B/dt, 2), peak_gib=round(torch.cuda.max_memory_allocated()/2**30, 2) if device == "cuda" else None)
            log(f"infer : batch {B:3d}, prompt {ids.shape[1]} tokens, {a.new_tokens} new: {r['tokens_per_s']} tokens/s, "
                f"{r['samples_per_s']} samples/s, peak {r['peak_gib']} GiB")
        except torch.cuda.OutOfMemoryError:
            r = dict(batch=B, tokens_per_s="OOM"); log(f"infer : batch {B:3d}: out of memory (skipped)")
            if device == "cuda": torch.cuda.empty_cache()
        res["inference"].append(r)
    if a.json:
        with open(a.json, "w") as f: json.dump(res, f, indent=1)
        log(f"figures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
