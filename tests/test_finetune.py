"Fine-tuning (10_finetune): the Recipe, the command's flags, the loss of a resumed run, the examples' columns."
import json, os
from dataclasses import asdict, fields
from pathlib import Path
import pytest, torch

os.environ["SARLANG_PROGRESS"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from sarlang_nb.core import SarlangError
from sarlang_nb.models import record_example
from sarlang_nb.prompts import CLASS_PREFIX
from sarlang_nb.testing import demo_dataset
from sarlang_nb.records import write_json_records
import sarlang_nb.finetune as ft
from sarlang_nb.finetune import (Recipe, RECIPES, finetune, load_examples, read_records, _image_path, main as ft_main,
                                 field_docs, CKPT_REQUEST, LOSS_RECORD)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    files = demo_dataset(d, 12)
    # SARVQA1-style records (source sardet): the mixing prefix applies to them; one answer is not ASCII
    sardet = [dict(image=f"SARimages/demo_{9000000 + i:07d}.png", question="How many ships are there in the image",
                   answer="2 ☃" if i == 1 else str(i), source="sardet", application="instance counting") for i in range(5)]
    files["sardet"] = d/"Text"/"VQA"/"train"/"SARVQA1_train.json"
    write_json_records(files["sardet"], sardet, jsonl=True)
    return d, files


def _old_load_examples(paths, mix_prefix=True, max_samples=None, image_roots=()):
    "What load_examples returned before the columns: a list of dicts (kept here as the reference)."
    out = []
    for p in paths:
        recs, root = read_records(p)
        for k, r in enumerate(recs[:max_samples]):
            e = record_example(r, mix_prefix); e["image_rel"] = e["image"]; e["data_file"] = str(p); e["row"] = k + 1
            e["image"] = str(_image_path(e["image"], [root, *image_roots])); out.append(e)
    return out


@pytest.mark.parametrize("mix_prefix", [True, False])
@pytest.mark.parametrize("max_samples", [None, 3])
def test_examples_equal_the_old_list(demo, mix_prefix, max_samples):
    d, files = demo
    fs = [files["sardet"], files["vqa_train"], files["caption_train"], files["vqa_test"]]
    new, old = load_examples(fs, mix_prefix, max_samples), _old_load_examples(fs, mix_prefix, max_samples)
    assert len(new) == len(old) and list(new) == old and new == old
    assert [new[i] for i in range(len(new))] == old and new[-1] == old[-1] and new[2:7] == old[2:7]
    assert any(CLASS_PREFIX in e["prompt"] for e in new) == mix_prefix
    with pytest.raises(IndexError): new[len(new)]
    assert [new.count(f) for f in fs] == [sum(e["data_file"] == str(f) for e in old) for f in fs]


def test_examples_image_roots_and_compactness(demo, tmp_path):
    d, files = demo
    run = tmp_path/"run"; (run/"Text"/"caption").mkdir(parents=True)
    f = run/"Text"/"caption"/"Caption-training.csv"; f.write_bytes(files["caption_train"].read_bytes())
    assert list(load_examples([f], image_roots=[d])) == _old_load_examples([f], image_roots=[d])
    assert all(Path(e["image"]).parent == d/"SARimages" for e in load_examples([f], image_roots=[d]))
    ex = load_examples([files["vqa_train"]]*40)            # the same questions and answers over and over: stored once
    assert len(ex) == 40*24 and ex.nbytes() < 40*24*40


def test_recipes_are_the_old_numbers():
    assert asdict(RECIPES["paper"]) == dict(epochs=3.0, batch_size=1, grad_accum=8, lr=1e-4, warmup_ratio=0.1, scheduler="cosine",
        lora_r=8, lora_alpha=16, lora_dropout=0.0, train_embeddings=False, cutoff_len=2048, image_max_pixels=262144, max_steps=None)
    assert asdict(RECIPES["smoke"]) == dict(epochs=3.0, batch_size=8, grad_accum=1, lr=2e-3, warmup_ratio=0.1, scheduler="cosine",
        lora_r=8, lora_alpha=16, lora_dropout=0.0, train_embeddings=True, cutoff_len=512, image_max_pixels=None, max_steps=1000)
    assert set(field_docs(Recipe)) == {f.name for f in fields(Recipe)} and all(field_docs(Recipe).values())
    for bad, msg in [(dict(lr=0), "--lr must be a number > 0"), (dict(lora_dropout=1.0), "--lora-dropout must be a number in"),
                     (dict(cutoff_len=1.5), "--cutoff-len must be a positive integer"), (dict(train_embeddings="yes"), "--train-embeddings must be a bool")]:
        with pytest.raises(SarlangError, match=msg): Recipe(**bad)


def test_command_flags_come_from_the_recipe(demo, tmp_path, monkeypatch, capsys):
    d, files = demo
    seen = {}
    def fake(model, data, out, **kw): seen.update(kw, model=model, data=data, out=out); return {"train_metrics": {"steps": 0}}
    monkeypatch.setattr(ft, "finetune", fake)
    assert ft_main(["--model", "blip", "--data", "a.json", "b.csv", "--out", "o", "--recipe", "smoke", "--lr", "1e-3",
                    "--no-train-embeddings", "--max-steps", "7", "--no-mix-prefix", "--no-bf16"]) == 0
    assert seen["data"] == ["a.json", "b.csv"] and seen["recipe"] == "smoke" and seen["mix_prefix"] is False and seen["bf16"] is False
    assert (seen["lr"], seen["train_embeddings"], seen["max_steps"], seen["batch_size"], seen["save_steps"]) == (1e-3, False, 7, None, 200)
    assert {f.name for f in fields(Recipe)} <= set(seen)
    capsys.readouterr()
    assert ft_main(["--help"]) == 0
    h = capsys.readouterr().out
    for f in fields(Recipe): assert f"--{f.name.replace('_', '-')}" in h and field_docs(Recipe)[f.name].split(" (")[0] in h.replace("\n", " ")
    assert ft_main(["--model", "qwen2-vl", "--data", "a.json", "--out", "o", "--warmup-ratio", "1"]) == 2
    assert "argument --warmup-ratio: must be a number in [0, 1)" in capsys.readouterr().err
    assert ft_main(["--data", "a.json", "--out", "o"]) == 2                                   # --model is required
    monkeypatch.undo()
    assert ft_main(["--model", "qwen2-vl", "--data", str(tmp_path/"none.json"), "--out", str(tmp_path/"o")]) == 1
    assert "sarlang-finetune: error:" in capsys.readouterr().err


def _interrupt_after_step(monkeypatch, step):
    "Stop training like a kill right after checkpoint `step` is saved (after every callback saw it)."
    from transformers.trainer_callback import CallbackHandler
    orig = CallbackHandler.on_save
    def on_save(self, args, state, control):
        control = orig(self, args, state, control)
        if state.global_step == step: raise KeyboardInterrupt
        return control
    monkeypatch.setattr(CallbackHandler, "on_save", on_save)


def test_resumed_run_reports_the_loss_of_the_whole_run(demo, tmp_path, monkeypatch):
    "Issue 17: an interrupted-then-resumed fine-tune reports the same train_loss as the uninterrupted one (same weights too)."
    d, files = demo
    kw = dict(recipe="smoke", max_steps=4, batch_size=2, save_steps=2, logging_steps=2, max_samples=8)
    full = finetune("qwen2-vl", files["vqa_train"], tmp_path/"full", **kw)
    with monkeypatch.context() as m:
        _interrupt_after_step(m, 2)
        with pytest.raises(KeyboardInterrupt): finetune("qwen2-vl", files["vqa_train"], tmp_path/"cut", **kw)
    assert (tmp_path/"cut"/"checkpoints"/"checkpoint-2").is_dir() and not (tmp_path/"cut"/"adapter_model.safetensors").exists()
    res = finetune("qwen2-vl", files["vqa_train"], tmp_path/"cut", resume=True, **kw)
    assert res["train_metrics"]["resumed_from"] == "checkpoint-2" and res["train_metrics"]["steps"] == 4
    assert res["train_metrics"]["train_loss"] == full["train_metrics"]["train_loss"]
    assert [h["loss"] for h in res["log_history"]] == [h["loss"] for h in full["log_history"]]
    from safetensors.torch import load_file
    a, b = load_file(tmp_path/"full"/"adapter_model.safetensors"), load_file(tmp_path/"cut"/"adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path/"cut"/"checkpoints"/"checkpoint-2"/LOSS_RECORD).exists()
    card = (tmp_path/"full"/"README.md").read_text()
    assert "| lora_r | 8 | LoRA rank |" in card and "| bf16 | False | bf16 training |" in card
    req = json.loads((tmp_path/"cut"/"checkpoints"/CKPT_REQUEST).read_text())
    assert req["lr"] == 2e-3 and "max_steps" not in req
