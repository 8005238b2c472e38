"Models, LoRA fine-tuning and inference (09_models, 10_finetune, 11_inference): tiny models, few steps."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch

os.environ["SARLANG_PROGRESS"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from sarlang_nb.core import SarlangError, open_run
from sarlang_nb.models import load_vlm, MODELS, CAPTION_PROMPT
from sarlang_nb.testing import demo_dataset
from sarlang_nb.finetune import finetune, load_examples, load_finetuned, main as ft_main, finetune_run
from sarlang_nb.inference import predict, main as infer_main, infer_run, score_run, PRED_FILE, RESULT_FILE
from sarlang_nb.predictions import read_predictions, read_vqa_result

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return d, demo_dataset(d, 12)


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl", "llava-1.5", "blip"])
def test_adapter_trains_and_generates(name, demo, tmp_path):
    "Each tiny adapter: a few LoRA steps lower the loss on the answers; only LoRA/embedding weights change; adapter reloads."
    d, files = demo
    info = finetune(name, [files["vqa_train"], files["caption_train"]], tmp_path/"out", recipe="smoke", max_steps=6,
                    batch_size=4, logging_steps=1, save_steps=100)
    m = info["train_metrics"]
    assert m["steps"] == 6 and m["last_logged_loss"] < m["first_logged_loss"]
    assert info["lora_targets"] and all("vision" not in t and "visual" not in t for t in info["lora_targets"])
    ad = load_finetuned(tmp_path/"out")
    ex = load_examples(files["vqa_test"])[:3]
    preds = ad.generate([ad.encode(e["image"], e["prompt"]) for e in ex], 5)
    assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
    card = (tmp_path/"out"/"README.md").read_text()
    assert "base_model:" in card and "LoRA targets" in card and "Hyper-parameters" in card


def test_paper_recipe_defaults():
    from sarlang_nb.finetune import RECIPES
    r = RECIPES["paper"]
    assert (r.epochs, r.batch_size, r.grad_accum, r.lr, r.warmup_ratio, r.scheduler, r.lora_r) == (3.0, 1, 8, 1e-4, 0.1, "cosine", 8)
    assert r.image_max_pixels == 262144 and r.train_embeddings is False


def test_collator_masks_all_but_answer(demo):
    d, files = demo
    ad = load_vlm("qwen2-vl")
    e = ad.encode(load_examples(files["vqa_train"])[0]["image"], "Question: How many ships are there in the image. Answer the question concisely.", "3")
    b = ad.collate([e, ad.encode(load_examples(files["caption_train"])[0]["image"], CAPTION_PROMPT, "There are 3 ships on the dark sea surface.")])
    kept = [ad.tokenizer.decode([i for i, l in zip(b["input_ids"][k], b["labels"][k]) if l != -100]) for k in range(2)]
    assert kept == ["3<|im_end|>", "There are 3 ships on the dark sea surface.<|im_end|>"]
    assert (b["labels"][b["attention_mask"] == 0] == -100).all()


def test_missing_weights_is_clear():
    with pytest.raises(SarlangError, match="--model-path llava-1.5="): load_vlm("llava-1.5", "/no/such/dir")
    with pytest.raises(SarlangError, match="unknown model"): load_vlm("gpt-2")


def test_cli_finetune_infer_resume(demo, tmp_path, capsys):
    "sarlang-finetune then sarlang-infer: adapter, both prediction files; --resume continues; inference resumes."
    d, files = demo
    out = tmp_path/"ad"
    args = ["--model", "qwen2-vl", "--recipe", "smoke", "--data", str(files["vqa_train"]), str(files["caption_train"]),
            "--out", str(out), "--batch-size", "2", "--save-steps", "2"]
    assert ft_main(args + ["--max-steps", "2"]) == 0
    assert (out/"checkpoints"/"checkpoint-2").is_dir()
    assert ft_main(args + ["--max-steps", "4", "--resume"]) == 0
    info = json.loads((out/"sarlang_finetune.json").read_text())
    assert info["train_metrics"]["resumed_from"] == "checkpoint-2" and info["train_metrics"]["steps"] == 4
    p = tmp_path/"pred"
    assert infer_main(["--adapter", str(out), "--data", str(files["vqa_test"]), str(files["caption_test_concise"]),
                       "--out", str(p), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    rows = read_predictions(p/PRED_FILE)
    n = len(load_examples([files["vqa_test"], files["caption_test_concise"]]))
    assert len(rows) == n and {"prompt", "predict", "label", "image", "application", "question"} <= set(rows[0])
    n_vqa = len(load_examples(files["vqa_test"]))
    assert len(read_vqa_result(p/RESULT_FILE)) == n_vqa                 # the authors' file: VQA rows only
    assert not (p/RESULT_FILE).read_text().startswith("image,")                # and no header row (it would be scored)
    # a kill mid-file: the next run keeps the complete rows and finishes
    lines = (p/PRED_FILE).read_text().splitlines(keepends=True)
    (p/PRED_FILE).write_text("".join(lines[:5]) + lines[5][:10])
    assert infer_main(["--adapter", str(out), "--data", str(files["vqa_test"]), str(files["caption_test_concise"]),
                       "--out", str(p), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    st = json.loads((p/"inference_stats.json").read_text())
    assert st["resumed_rows"] == 5 and read_predictions(p/PRED_FILE) == rows


def test_cli_bad_input(tmp_path, demo, capsys):
    d, files = demo
    assert ft_main(["--model", "qwen2-vl", "--data", str(tmp_path/"none.json"), "--out", str(tmp_path/"o")]) == 1
    assert "none.json: data file not found" in capsys.readouterr().err
    bad = tmp_path/"Text"/"VQA"/"train"/"bad.json"; bad.parent.mkdir(parents=True); bad.write_text('[{"image": "x.png"}]')
    assert ft_main(["--model", "qwen2-vl", "--data", str(bad), "--out", str(tmp_path/"o")]) == 1
    assert infer_main(["--data", str(files["vqa_test"]), "--out", str(tmp_path/"o")]) == 1
    assert infer_main(["--adapter", str(tmp_path), "--data", str(files["vqa_test"]), "--out", str(tmp_path/"o")]) == 1
    assert ft_main(["--help"]) == 0
    assert "LoRA" in capsys.readouterr().out


def _as_if_ran(rd, *stages):
    "Mark the stages a test replaces with hand-made data as complete (their outputs are the test's own files)."
    for s in stages: rd.write_manifest(s, [])


def test_stage_functions_smoke_claim(tmp_path):
    "The stage path on a run with (demo) data: fine-tune, predict zero-shot and lora, metrics files, lora beats zero-shot."
    rd = open_run(tmp_path/"run", "smoke", models=["qwen2-vl"])
    demo_dataset(rd.path, 120, seed=0)
    _as_if_ran(rd, "02_preprocess", "07_splits", "09_models")
    infos, origin = finetune_run(rd, max_steps=120)
    stats, _ = infer_run(rd, max_new_tokens=24, max_samples=16, batch_size=16)
    res = score_run(rd)["qwen2-vl"]
    for mode in ("zero-shot", "lora"):
        assert (rd.predictions("qwen2-vl", mode)/PRED_FILE).exists() and (rd.predictions("qwen2-vl", mode)/RESULT_FILE).exists()
        assert (rd.metrics/f"vqa_qwen2-vl_{mode}.json").exists() and (rd.metrics/f"captions_qwen2-vl_{mode}_concise.json").exists()
    assert res["lora"]["accuracy"] > res["zero-shot"]["accuracy"], res
    assert res["lora"]["CIDEr_concise"] > res["zero-shot"]["CIDEr_concise"], res


@pytest.mark.timeout(600)
def test_torchrun_two_processes_cpu(demo, tmp_path):
    "The same command under torchrun --nproc_per_node 2 on CPU (gloo DDP) for a few steps."
    d, files = demo
    import socket
    with socket.socket() as so: so.bind(("127.0.0.1", 0)); port = so.getsockname()[1]   # a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SARLANG_PROGRESS": "0"}
    cmd = [str(Path(sys.executable).parent/"torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m", "sarlang_nb.finetune",
           "--model", "qwen2-vl", "--recipe", "smoke", "--data", str(files["vqa_train"]), "--out", str(tmp_path/"ddp"),
           "--max-steps", "3", "--batch-size", "2", "--logging-steps", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path/"ddp"/"sarlang_finetune.json").read_text())
    assert info["hyperparameters"]["world_size"] == 2 and info["train_metrics"]["steps"] == 3
    assert (tmp_path/"ddp"/"adapter_model.safetensors").exists()


def test_generic_adapter_from_folder(tmp_path, demo):
    "The generic image-text-to-text path: a model folder with a processor + chat template trains with LoRA and predicts."
    from transformers import LlavaProcessor
    d, files = demo
    tmpl = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    a = load_vlm("llava-1.5"); a.save_base(tmp_path/"m")
    LlavaProcessor(image_processor=a.image_processor, tokenizer=a.tokenizer, chat_template=tmpl, patch_size=14,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(tmp_path/"m")
    info = finetune("generic", files["vqa_train"], tmp_path/"out", model_path=tmp_path/"m", recipe="smoke", max_steps=3,
                    batch_size=2, train_embeddings=False, save_steps=100)
    assert info["train_metrics"]["steps"] == 3 and len(info["lora_targets"]) == 14
    assert infer_main(["--adapter", str(tmp_path/"out"), "--data", str(files["vqa_test"]), "--out", str(tmp_path/"p"),
                       "--max-new-tokens", "3", "--max-samples", "4"]) == 0
    assert len(read_predictions(tmp_path/"p"/PRED_FILE)) == 4


def test_real_sar_images_through_adapter():
    "Real 800 px SAR chips (../shared/data): image_max_pixels is respected and the tiny model generates for each."
    from sarlang_nb.core import shared_data
    from sarlang_nb.models import load_image, vqa_prompt
    sd = shared_data()
    if sd is None: pytest.skip("../shared/data (real SAR reference images) is absent")
    ims = sorted((sd/"real_sar_det"/"images").glob("*.jpg"))[:3]
    assert ims
    for p in ims:
        im = load_image(p, 262144)
        assert im.mode == "RGB" and im.width*im.height <= 262144
    ad = load_vlm("qwen2-vl", image_max_pixels=262144)     # the processor then resizes to the tiny model's 112 px
    out = ad.generate([ad.encode(p, vqa_prompt("How many ships are there in this image?")) for p in ims], 4)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)


def test_stage_inference_resumes_after_a_kill(tmp_path, monkeypatch):
    "infer_run killed halfway: the re-run keeps the rows written; a killed run of another request is not taken for this one."
    import sarlang_nb.inference as inf
    rd = open_run(tmp_path/"run", "smoke", models=["qwen2-vl"])
    demo_dataset(rd.path, 20, seed=0); _as_if_ran(rd, "02_preprocess", "07_splits", "09_models")
    finetune_run(rd, max_steps=2, max_samples=8)
    real = inf.predict
    def killed(ad, ex, out, *a, **k):                 # writes the first 3 rows, then the process "dies"
        real(ad, ex[:3], out, *a, **k); raise KeyboardInterrupt
    kw = dict(max_new_tokens=4, max_samples=4, batch_size=2)
    monkeypatch.setattr(inf, "predict", killed)
    with pytest.raises(KeyboardInterrupt): infer_run(rd, **kw)
    monkeypatch.setattr(inf, "predict", real)
    stats, _ = infer_run(rd, **kw)
    assert stats[("qwen2-vl", "zero-shot")]["resumed_rows"] == 3
    clean = read_predictions(rd.predictions("qwen2-vl", "zero-shot")/PRED_FILE)
    # another request (budget 1) killed halfway, then the first request again: nothing of the killed run is reused
    monkeypatch.setattr(inf, "predict", killed)
    with pytest.raises(KeyboardInterrupt): infer_run(rd, **{**kw, "max_new_tokens": 1})
    monkeypatch.setattr(inf, "predict", real)
    stats, _ = infer_run(rd, **kw)
    assert stats[("qwen2-vl", "zero-shot")]["resumed_rows"] == 0
    assert read_predictions(rd.predictions("qwen2-vl", "zero-shot")/PRED_FILE) == clean


def test_stage_finetune_keeps_checkpoints_after_a_kill(tmp_path, monkeypatch):
    "finetune_run killed after a checkpoint: the re-run continues from it instead of deleting it."
    import sarlang_nb.finetune as ft
    rd = open_run(tmp_path/"run", "smoke", models=["qwen2-vl"])
    demo_dataset(rd.path, 20, seed=0); _as_if_ran(rd, "02_preprocess", "07_splits", "09_models")
    seen = []
    def killed(name, files, dest, *a, **k):
        (Path(dest)/"checkpoints"/"checkpoint-100").mkdir(parents=True); raise KeyboardInterrupt
    def record(name, files, dest, *a, **k):
        seen.append(((Path(dest)/"checkpoints"/"checkpoint-100").is_dir(), k.get("resume"))); raise KeyboardInterrupt
    monkeypatch.setattr(ft, "finetune", killed)
    with pytest.raises(KeyboardInterrupt): finetune_run(rd, max_steps=2, max_samples=8)
    monkeypatch.setattr(ft, "finetune", record)
    with pytest.raises(KeyboardInterrupt): finetune_run(rd, max_steps=2, max_samples=8)
    assert seen == [(True, True)]
    with pytest.raises(KeyboardInterrupt): finetune_run(rd, max_steps=3, max_samples=8)   # another request starts over
    assert seen[-1] == (False, True)


def test_cli_infer_refuses_to_resume_other_settings(demo, tmp_path, capsys):
    "Re-running sarlang-infer into the same OUT with another model or budget does not pass the old rows off as new ones."
    d, files = demo
    base = ["--data", str(files["vqa_test"]), "--out", str(tmp_path/"p"), "--max-samples", "2", "--batch-size", "2"]
    assert infer_main(["--model", "qwen2-vl", "--max-new-tokens", "3"] + base) == 0
    capsys.readouterr()
    assert infer_main(["--model", "blip", "--max-new-tokens", "3"] + base) == 1
    err = capsys.readouterr().err
    assert "made with other settings" in err and "model" in err and "generated_predictions.jsonl" in err
    assert infer_main(["--model", "qwen2-vl", "--max-new-tokens", "5"] + base) == 1
    assert "max_new_tokens" in capsys.readouterr().err
    assert infer_main(["--model", "qwen2-vl", "--max-new-tokens", "3"] + base) == 0              # the same settings resume
    assert json.loads((tmp_path/"p"/"inference_stats.json").read_text())["resumed_rows"] == 2
    assert infer_main(["--model", "blip", "--max-new-tokens", "3", "--no-resume"] + base) == 0   # or start over
    assert json.loads((tmp_path/"p"/"inference_stats.json").read_text())["model"] == "blip"


def test_cli_infer_unreadable_image_fails_alone(demo, tmp_path, capsys):
    "One unreadable image: its rows are reported (empty predict + error, exit 3), every other example is still predicted."
    d, files = demo
    ex = load_examples(files["vqa_test"], max_samples=6)
    gone = ex[-1]["image"]
    bad = [e["image"] == gone for e in ex]
    assert 0 < sum(bad) < len(ex)
    Path(gone).rename(tmp_path/"moved.png")
    try:
        code = infer_main(["--model", "qwen2-vl", "--data", str(files["vqa_test"]), "--out", str(tmp_path/"p"),
                           "--max-samples", "6", "--batch-size", "4", "--max-new-tokens", "3"])
    finally: (tmp_path/"moved.png").rename(gone)
    assert code == 3 and f"{sum(bad)} example(s) failed" in capsys.readouterr().err
    rows = read_predictions(tmp_path/"p"/PRED_FILE)
    assert len(rows) == len(ex) and [bool(r.get("error")) for r in rows] == bad
    assert all(r["predict"] == "" and "image not found" in r["error"] for r, b in zip(rows, bad) if b)
    st = json.loads((tmp_path/"p"/"inference_stats.json").read_text())
    assert st["failed"] == sum(bad) and st["first_failures"][0][0] == bad.index(True) + 1
    assert len(read_vqa_result(tmp_path/"p"/RESULT_FILE)) == len(ex) - sum(bad)   # failed rows are not for the authors' script to score


# --- review fixes -----------------------------------------------------------------------------------------------

def test_load_image_16bit_is_stretched_not_clipped(tmp_path):
    "A 16-bit PNG (PIL mode I;16) reaches the model as a percentile-stretched grey ramp, not a white square."
    import numpy as np
    from PIL import Image
    from sarlang_nb.models import load_image
    ramp = np.linspace(0, 65535, 64*64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path/"sar16.png")
    g = np.asarray(load_image(tmp_path/"sar16.png"))[..., 0]
    assert (g == 255).mean() < 0.05 and (g == 0).mean() < 0.05 and len(np.unique(g)) > 200
    dark = (ramp // 64).astype(np.uint16)                    # a dark 16-bit chip (values 0..1023) is stretched too
    Image.fromarray(dark).save(tmp_path/"dark16.png")
    assert np.asarray(load_image(tmp_path/"dark16.png")).max() == 255
    g8 = np.asarray(load_image(Image.fromarray((ramp // 257).astype(np.uint8))))   # 8-bit images are left as they are
    assert (g8[..., 0] == ramp // 257).all()


def test_encode_cutoff_cuts_the_answer_keeping_its_end(demo):
    "cutoff_len: the answer is cut keeping its end token; a prompt that leaves no room is refused, naming file and row."
    from sarlang_nb.finetune import SFTDataset
    d, files = demo
    ex = load_examples(files["vqa_train"])
    for name in ("qwen2-vl", "blip"):
        ad = load_vlm(name)
        n = len(ad.encode(ex[0]["image"], ex[0]["prompt"])["input_ids"])
        full = ad.encode(ex[0]["image"], ex[0]["prompt"], "There are three ships near the harbor bridge.")
        cut = ad.encode(ex[0]["image"], ex[0]["prompt"], "There are three ships near the harbor bridge.", cutoff=n + 2)
        sup = [i for i, l in zip(cut["input_ids"], cut["labels"]) if l != -100]
        assert len(cut["input_ids"]) <= n + 2 and len(sup) >= 2 and sup[-1] == full["input_ids"][-1], (name, sup)
        assert torch.isfinite(ad.model(**ad.collate([cut])).loss)
        with pytest.raises(SarlangError, match="cutoff_len"): ad.encode(ex[0]["image"], ex[0]["prompt"], "3", cutoff=n - 1)
    with pytest.raises(SarlangError, match=r"SARVQA2_train.json row 2: .*cutoff_len 10"):
        SFTDataset(load_vlm("qwen2-vl"), ex, cutoff_len=10)[1]


def test_cli_bad_numbers_exit_2(demo, tmp_path, capsys):
    "Zero/negative numeric flags are argparse errors naming the flag (exit 2); the functions refuse them too."
    d, files = demo
    base = ["--model", "qwen2-vl", "--data", str(files["vqa_test"]), "--out", str(tmp_path/"p"), "--max-new-tokens", "2"]
    for flag, val in [("--batch-size", "0"), ("--batch-size", "-1"), ("--max-samples", "-1"), ("--max-samples", "0"),
                      ("--max-new-tokens", "0")]:
        assert infer_main(base + [flag, val]) == 2 and f"argument {flag}: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path/"p").exists()
    ft = ["--model", "qwen2-vl", "--data", str(files["vqa_train"]), "--out", str(tmp_path/"o")]
    for flag, val in [("--max-samples", "-1"), ("--max-steps", "0"), ("--save-steps", "0"), ("--epochs", "0"), ("--lr", "-0.001"),
                      ("--cutoff-len", "0"), ("--batch-size", "0"), ("--warmup-ratio", "1")]:
        assert ft_main(ft + [flag, val]) == 2 and f"argument {flag}: must be" in capsys.readouterr().err
    with pytest.raises(SarlangError, match="max_samples must be a positive"): load_examples(files["vqa_test"], max_samples=-1)
    with pytest.raises(SarlangError, match="batch_size must be a positive"): predict(load_vlm("qwen2-vl"), load_examples(files["vqa_test"]), tmp_path/"q", batch_size=0)
    with pytest.raises(SarlangError, match="--batch-size must be a positive"): finetune("qwen2-vl", files["vqa_train"], tmp_path/"o", batch_size=0)


def test_cli_infer_does_not_resume_old_labels(tmp_path, capsys):
    "Test answers corrected after a run: resuming is refused (data changed); --no-resume writes the new labels."
    f = demo_dataset(tmp_path/"demo", 6)["vqa_test"]
    args = ["--model", "qwen2-vl", "--data", str(f), "--out", str(tmp_path/"p"), "--max-samples", "2", "--batch-size", "2", "--max-new-tokens", "2"]
    assert infer_main(args) == 0
    recs = json.loads(f.read_text())
    for r in recs: r["answer"] = "corrected " + r["answer"]
    f.write_text(json.dumps(recs))
    capsys.readouterr()
    assert infer_main(args) == 1
    assert "data_sha256" in capsys.readouterr().err
    assert infer_main(args + ["--no-resume"]) == 0
    assert [r["label"] for r in read_predictions(tmp_path/"p"/PRED_FILE)] == [r["answer"] for r in recs[:2]]
    # the row check itself (an OUT without infer_request.json): a changed label is other data
    (tmp_path/"p"/"infer_request.json").unlink()
    for r in recs: r["answer"] = "again " + r["answer"]
    f.write_text(json.dumps(recs))
    assert infer_main(args) == 1 and "row 1: existing predictions belong to other data" in capsys.readouterr().err


def test_cli_finetune_fresh_run_clears_checkpoints_and_resume_checks_them(demo, tmp_path, capsys):
    "A fresh sarlang-finetune empties OUT/checkpoints; --resume refuses checkpoints of other data or past --max-steps."
    d, files = demo
    out = tmp_path/"ad"
    common = ["--model", "qwen2-vl", "--recipe", "smoke", "--out", str(out), "--batch-size", "2", "--max-samples", "4"]
    caps, vqa = ["--data", str(files["caption_train"])], ["--data", str(files["vqa_train"])]
    assert ft_main(common + caps + ["--max-steps", "2", "--save-steps", "2"]) == 0
    assert (out/"checkpoints"/"checkpoint-2").is_dir()
    assert ft_main(common + vqa + ["--max-steps", "1", "--save-steps", "50"]) == 0              # fresh: old checkpoints go
    assert sorted(p.name for p in (out/"checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]   # run 2's final one only
    assert ft_main(common + vqa + ["--max-steps", "2", "--save-steps", "2", "--resume"]) == 0   # nothing of run 1 resumed
    info = json.loads((out/"sarlang_finetune.json").read_text())
    assert info["train_metrics"]["resumed_from"] == "checkpoint-1" and info["train_metrics"]["steps"] == 2
    capsys.readouterr()
    assert ft_main(common + caps + ["--max-steps", "4", "--resume"]) == 1                        # other data
    assert "other settings (data_sha256 differ)" in capsys.readouterr().err
    assert ft_main(common + vqa + ["--max-steps", "4", "--lr", "1e-3", "--resume"]) == 1          # other hyper-parameters
    assert "other settings (lr differ)" in capsys.readouterr().err
    assert ft_main(common + vqa + ["--max-steps", "1", "--resume"]) == 1                         # past --max-steps
    assert "checkpoint-2 is already past --max-steps 1" in capsys.readouterr().err


def test_stage_redoes_work_after_data_change(tmp_path):
    "The run's Text/ files regenerated with other content under the same paths: the adapter is retrained, predictions redone."
    from sarlang_nb.core import sha256_file
    rd = open_run(tmp_path/"run", "smoke", models=["qwen2-vl"])
    demo_dataset(rd.path, 8, seed=0)
    _as_if_ran(rd, "02_preprocess", "07_splits", "09_models")
    info, _ = finetune_run(rd, max_steps=1, max_samples=2)
    infer_run(rd, max_new_tokens=1, max_samples=1, batch_size=1)
    demo_dataset(rd.path, 8, seed=1)
    info2, _ = finetune_run(rd, max_steps=1, max_samples=2)
    assert [x["sha256"] for x in info2["qwen2-vl"]["data"]] == [sha256_file(x["path"]) for x in info2["qwen2-vl"]["data"]]
    assert info2["qwen2-vl"]["data"] != info["qwen2-vl"]["data"]
    stats, _ = infer_run(rd, max_new_tokens=1, max_samples=1, batch_size=1)
    ex = load_examples(sorted((rd.vqa/"test").glob("*.json")) + [rd.captions/"Caption_test1.csv"], True, 1)
    for mode in ("zero-shot", "lora"):
        assert stats[("qwen2-vl", mode)]["resumed_rows"] == 0
        assert [r["label"] for r in read_predictions(rd.predictions("qwen2-vl", mode)/PRED_FILE)] == [e["answer"] for e in ex]


def test_load_image_uses_the_sar_reader_rule(tmp_path, monkeypatch):
    "Inference reads TIFFs as sarlang-preprocess does: complex64 -> |z|, NaN refused by name; a bomb PNG refused before decoding."
    import numpy as np, tifffile
    from PIL import Image
    from sarlang_nb.models import load_image
    z = (np.arange(64, dtype=np.float32).reshape(8, 8) * (1 + 1j)).astype(np.complex64)
    tifffile.imwrite(tmp_path/"c.tif", z)
    im = load_image(tmp_path/"c.tif")
    assert im.size == (8, 8) and np.asarray(im)[0, 0, 0] == 0 and np.asarray(im)[-1, -1, 0] == 255
    bad = np.ones((8, 8), np.float32); bad[3, 3] = np.nan
    tifffile.imwrite(tmp_path/"nan.tif", bad)
    with pytest.raises(SarlangError, match="nan.tif"): load_image(tmp_path/"nan.tif")
    Image.new("L", (200, 200)).save(tmp_path/"bomb.png")
    monkeypatch.setenv("SARLANG_MAX_PIXELS", "10000")             # a small limit stands in for a decompression bomb
    with pytest.raises(SarlangError, match="bomb.png"): load_image(tmp_path/"bomb.png")
