"Per-word Grad-CAM (13_gradcam): the known-region test for every adapter, shapes and ranges, the pointing-game arithmetic, the stage on a small run, the CLI on bad input."
import json, os
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

from sarlang_nb.core import open_run, write_json
from sarlang_nb.models import load_vlm, GenericAdapter
from sarlang_nb.gradcam import (word_maps, localise_vision, blank_minus, upsample, image_grid, split_words, pointing, summarise,
                                box_distance, peak, cross_attention_layer, randomise_language_model, rank_correlation, run_stage,
                                reference_answer, category_of, alignment_items, main)

torch.set_num_threads(1)
ADAPTERS = ["qwen2-vl", "qwen2.5-vl", "llava-1.5", "blip", "generic"]
GREY = (128, 128, 128)


def tiny(name):
    "The tiny model of `name`; `generic` is the generic adapter around the tiny LLaVA, through a processor with a chat template."
    if name != "generic": return load_vlm(name)
    from transformers import LlavaProcessor
    a = load_vlm("llava-1.5")
    tmpl = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    p = LlavaProcessor(image_processor=a.image_processor, tokenizer=a.tokenizer, chat_template=tmpl, patch_size=14,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return GenericAdapter(a.model, p, name="generic", image_max_pixels=a.image_max_pixels)


def scene(W, H, box, seed=1):
    "A grey W x H image with random texture inside box (x0, y0, x1, y1)."
    a = np.full((H, W, 3), 128, np.uint8); x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = (np.random.default_rng(seed).random((y1 - y0, x1 - x0, 3))*255).astype(np.uint8)
    return Image.fromarray(a)


def cell_box(r, extent, rows, cols, i, j, margin=0.3):
    "Pixel box (x0, y0, x1, y1) inside grid cell (i, j) of a map on `extent`, shrunk by `margin` of the cell on each side."
    x0, y0, x1, y1 = extent; cw, ch = (x1 - x0)/cols, (y1 - y0)/rows
    return (int(x0 + (j + margin)*cw + 0.999), int(y0 + (i + margin)*ch + 0.999), int(x0 + (j + 1 - margin)*cw), int(y0 + (i + 1 - margin)*ch))


def _known_region(a, W, H, level="lm"):
    """Scenes with content in one grid cell, for every cell; returns (grid shape, [(cell, map result, box)])."""
    blank = Image.new("RGB", (W, H), GREY)
    probe = word_maps(a, [blank], answers=["a"], level=level)[0]          # the grid and its extent for this image size
    rows, cols = probe["grid"].shape[1:]
    cells = [(i, j) for i in range(rows) for j in range(cols)]
    boxes = [cell_box(None, probe["extent"], rows, cols, i, j) for i, j in cells]
    scenes = [scene(W, H, b, seed=k) for k, b in enumerate(boxes)]
    res = word_maps(a, scenes, answers=["two ships"]*len(cells), feature_transform=blank_minus(a, blank, level=level), level=level,
                    batch_size=16)
    return (rows, cols), list(zip(cells, res, boxes))


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("W,H", [(112, 112), (168, 112)])
def test_known_region_every_adapter(name, W, H):
    """A model that sees one region only (vision blocks made patch-local, features relative to a blank image), with the region in
    each cell of the grid in turn: every word's map has the grid's shape, is finite and in [0, 1], is zero outside the region's cell
    and has its maximum in the region, on the grid and on the image. Every cell is tried, so a transposed, shifted (CLS) or
    window-ordered mapping cannot pass by coincidence; the wide image checks Qwen's dynamic resolution and CLIP's centre crop."""
    a = tiny(name); localise_vision(a)
    (rows, cols), res = _known_region(a, W, H)
    if name.startswith("qwen"): assert (rows, cols) == ((4, 4) if W == H else (4, 5))
    else: assert (rows, cols) == (8, 8)
    for (i, j), r, box in res:
        assert r["words"] == ["two", "ships"] and r["grid"].shape == (2, rows, cols) and r["size"] == (W, H)
        assert np.isfinite(r["grid"]).all() and r["grid"].min() >= 0 and r["grid"].max() <= 1
        for g in r["grid"]:
            assert g.max() == 1.0 and np.unravel_index(g.argmax(), g.shape) == (i, j), (i, j)
            assert (g > 0).sum() == 1                                    # nothing outside the region's cell
        up = upsample(r["grid"][1], r["size"], r["extent"])
        assert up.shape == (H, W) and 0 <= up.min() and up.max() <= 1
        x, y = peak(r["grid"][1], r["extent"])
        assert box[0] <= x < box[2] and box[1] <= y < box[3], (x, y, box)      # the map's maximum on the image is in the region
        assert up[box[1]:box[3], box[0]:box[2]].max() == up.max()


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("W,H", [(112, 112), (168, 112)])
def test_known_region_qwen_patch_level(name, W, H):
    "level='vision' (the merger's input, one feature per 14 px patch): the 2x2 merge windows and Qwen2.5's attention windows undone, for every patch."
    a = load_vlm(name); localise_vision(a)
    (rows, cols), res = _known_region(a, W, H, level="vision")
    assert (rows, cols) == ((8, 8) if W == H else (8, 10))
    for (i, j), r, box in res:
        for g in r["grid"]:
            assert np.unravel_index(g.argmax(), g.shape) == (i, j) and (g > 0).sum() == 1, (i, j)


def test_grid_shapes_follow_the_processors():
    "Qwen: merged 2x2 windows of the resized image (non-square stays non-square); LLaVA: 8x8 patches without CLS; BLIP: CLS + 8x8."
    ims = [Image.new("RGB", (168, 112)), Image.new("RGB", (112, 112))]
    got = {}
    for name in ("qwen2-vl", "llava-1.5", "blip"):
        a = load_vlm(name)
        got[name] = [word_maps(a, [im], answers=["a ship"])[0]["grid"].shape for im in ims]
    assert got["qwen2-vl"] == [(2, 4, 5), (2, 4, 4)]
    assert got["llava-1.5"] == [(2, 8, 8)]*2 and got["blip"] == [(2, 8, 8)]*2


def test_blip_crossattn_known_region():
    "BLIP's attention x gradient maps: with zero background features carrying no value (the layer's value bias zeroed), the maximum is in the region."
    a = load_vlm("blip"); localise_vision(a)
    k = cross_attention_layer(a); assert k == 1
    torch.nn.init.zeros_(a.model.text_decoder.bert.encoder.layer[k].crossattention.self.value.bias)
    blank = Image.new("RGB", (112, 112), GREY); box = cell_box(None, (0, 0, 112, 112), 8, 8, 2, 6)
    r = word_maps(a, [scene(112, 112, box)], answers=["two ships near the harbor"], method="crossattn",
                  feature_transform=blank_minus(a, blank))[0]
    assert r["method"] == "crossattn" and r["layer"] == 1 and r["grid"].shape == (5, 8, 8)
    for g in r["grid"]:
        assert np.isfinite(g).all() and 0 <= g.min() and g.max() == 1
        assert np.unravel_index(g.argmax(), g.shape) == (2, 6)


def test_batched_maps_equal_single_and_logp_is_the_models():
    "Batching images does not change a map; a word's log-probability is the sum of its tokens' log-probabilities under a plain forward."
    a = load_vlm("qwen2-vl")
    rng = np.random.default_rng(0)
    ims = [Image.fromarray((rng.random((112, 112, 3))*255).astype(np.uint8)) for _ in range(3)]
    ans = ["two ships near the harbor", "a bridge", "harbours"]
    batch = word_maps(a, ims, answers=ans, batch_size=3)
    for im, x, b in zip(ims, ans, batch):
        one = word_maps(a, [im], answers=[x])[0]
        np.testing.assert_allclose(one["grid"], b["grid"], atol=1e-4); np.testing.assert_allclose(one["logp"], b["logp"], atol=1e-4)
    e = a.encode(ims[2], "Describe the content of this image in one sentence.", "harbours")
    bt = a.to_device(a.collate([e])); lab = bt.pop("labels")
    with torch.no_grad(): lp = torch.log_softmax(a.model(**bt).logits[0].float(), -1)
    pos = (lab[0] != -100).nonzero().flatten().tolist()
    toks = split_words(a.tokenizer, bt["input_ids"][0, pos].tolist())[0][1]
    assert len(toks) >= 1
    want = sum(float(lp[pos[k] - 1, bt["input_ids"][0, pos[k]]]) for k in toks)
    assert abs(batch[2]["logp"][0] - want) < 1e-4


def test_checkpointing_gives_the_same_maps():
    a = load_vlm("llava-1.5"); im = Image.new("RGB", (112, 112), (90, 10, 200))
    r0 = word_maps(a, [im], answers=["two ships near the harbor"])[0]
    r1 = word_maps(a, [im], answers=["two ships near the harbor"], checkpointing=True)[0]
    np.testing.assert_allclose(r0["grid"], r1["grid"], atol=1e-5)
    assert not a.model.training


def test_randomised_language_model_changes_maps():
    a = load_vlm("qwen2-vl"); im = Image.fromarray((np.random.default_rng(3).random((112, 112, 3))*255).astype(np.uint8))
    r0 = word_maps(a, [im], answers=["two ships near the harbor"])[0]
    vis = {n: p.clone() for n, p in a.model.named_parameters() if "visual" in n}
    assert randomise_language_model(a, 0) > 0
    assert all(torch.equal(vis[n], p) for n, p in a.model.named_parameters() if "visual" in n)   # vision untouched
    r1 = word_maps(a, [im], answers=["two ships near the harbor"])[0]
    assert np.nanmean([rank_correlation(x, y) for x, y in zip(r0["grid"], r1["grid"])]) < 0.9


def test_pointing_game_hand_computed():
    """10x10 map, 1.0 at row 2 col 7, 0.5 at row 0 col 5; box x 5-7, y 0-2. The maximum's centre (7.5, 2.5) is 0.707 px from the
    box: a miss at tolerance 0, a hit at 1. The box holds 4 pixel centres (chance 0.04), one of them the 0.5 (energy 1/3);
    12 pixel centres lie within 1 px (chance 0.12)."""
    h = np.zeros((10, 10)); h[2, 7] = 1.0; h[0, 5] = 0.5
    assert abs(box_distance(7.5, 2.5, [5, 0, 2, 2]) - 0.5*2**0.5) < 1e-12 and box_distance(6, 1, [5, 0, 2, 2]) == 0
    p0, p1 = pointing(h, [[5, 0, 2, 2]], 0), pointing(h, [[5, 0, 2, 2]], 1)
    assert (p0["hit"], p1["hit"]) == (False, True)
    assert p0["energy"] == pytest.approx(1/3) and p0["chance_energy"] == pytest.approx(0.04)
    assert p0["chance_hit"] == pytest.approx(0.04) and p1["chance_hit"] == pytest.approx(0.12)
    e = pointing(np.zeros((10, 10)), [[5, 0, 2, 2]], 1)
    assert (e["hit"], e["energy"], e["empty"]) == (False, 0.0, True)
    # two boxes of one category: the union counts once (boxes x 0-2 and x 1-3, y 0-1: 3 pixel centres)
    assert pointing(h, [[0, 0, 2, 1], [1, 0, 2, 1]], 0)["chance_energy"] == pytest.approx(0.03)
    # mean over categories of per-category means: ship 1 hit of 2, car 1 of 1 -> 0.75
    rows = [dict(category="ship", image="a", **p1), dict(category="ship", image="b", **pointing(h, [[0, 8, 2, 2]], 1)),
            dict(category="car", image="a", **pointing(h, [[6, 1, 3, 3]], 1))]
    s = summarise(rows)
    assert s["pointing_acc"] == pytest.approx(0.75) and (s["n_words"], s["n_images"], s["n_empty"]) == (3, 2, 0)
    assert s["categories"]["ship"]["n"] == 2 and s["categories"]["car"]["hit"] == 1.0
    assert s["energy_chance"] == pytest.approx(((0.04 + 0.04)/2 + 0.09)/2)


def test_answers_and_category_words():
    assert reference_answer({"ship": 2, "harbor": 1}) == "This SAR image shows two ships and one harbor."
    assert reference_answer({"aircraft": 3}) == "This SAR image shows three aircraft."
    assert [category_of(w, ["ship", "harbor", "bridge"]) for w in ("ships", "Harbour", "bridges", "shipyard")] == ["ship", "harbor", "bridge", None]


def _small_run(tmp_path, models, profile="smoke", with_boxes=True):
    "A run with a few images, a COCO file and LoRA adapters trained for 2 steps; the required stages' manifests written."
    from sarlang_nb.finetune import finetune
    from sarlang_nb.testing import demo_dataset
    rd = open_run(tmp_path/"run", profile, models=models)
    if with_boxes:
        rng = np.random.default_rng(0); images, anns = [], []
        for i in range(3):
            a = (rng.random((128, 128))*60).astype(np.uint8); a[20:40, 70:110] = 250; a[90:100, 10:30] = 200
            Image.fromarray(a).save(rd.sar_images/f"{i + 1:07d}.png")
            images.append(dict(id=i + 1, file_name=f"{i + 1:07d}.jpg", width=256, height=256))   # boxes at twice the image's scale
            anns += [dict(id=len(anns) + 1, image_id=i + 1, category_id=0, bbox=[140, 40, 80, 40], area=3200, iscrowd=0),
                     dict(id=len(anns) + 2, image_id=i + 1, category_id=5, bbox=[20, 180, 40, 20], area=800, iscrowd=0)]
        write_json(rd.annotations/"test.json", dict(images=images, annotations=anns,
                                                    categories=[dict(id=0, name="ship"), dict(id=5, name="harbor")]))
    files = demo_dataset(tmp_path/"demo", 8)
    for m in models:
        finetune(m, [files["vqa_train"]], rd.models(m)/"lora", recipe="smoke", max_steps=2, batch_size=2, save_steps=100)
    rd.write_manifest("03_synthetic", []); rd.write_manifest("10_finetune", [])
    return rd


def test_stage_tables_metrics_figures(tmp_path):
    "The stage on a small run with two models (BLIP adds the cross-attention rows): tables with chance rates, metrics with provenance, figures."
    rd = _small_run(tmp_path, ["qwen2-vl", "blip"])
    items = alignment_items(rd, 8)
    assert len(items) == 3 and items[0]["size"] == (128, 128) and items[0]["boxes"]["ship"] == [[70.0, 20.0, 40.0, 20.0]]
    s = run_stage(rd, n_images=3, n_figure=1, n_random=2)
    assert s["computed"] and s["data"] == "synthetic world" and s["tolerance_px"] == 15.0 and s["crossattn_layer"] == {"blip": 1}
    got = {(r["model"], r["mode"], r["method"]) for r in s["results"]}
    assert got == {(m, mode, "gradcam") for m in ("qwen2-vl", "blip") for mode in ("zero-shot", "lora")} | \
                  {("blip", mode, "crossattn") for mode in ("zero-shot", "lora")}
    for r in s["results"]:
        assert r["n_words"] == 6 and r["n_images"] == 3 and 0 <= r["pointing_acc"] <= 1 and 0 <= r["energy"] <= 1
        assert 0 < r["energy_chance"] < r["pointing_chance"] < 1
    md = (rd.tables/"gradcam_pointing.md").read_text()
    assert "synthetic world" in md and "15 px" in md and md.count("| qwen2-vl |") == 2
    assert (rd.tables/"gradcam_pointing.csv").read_text().splitlines()[0].startswith("model,mode,method")
    cats = (rd.tables/"gradcam_pointing_categories.csv").read_text().splitlines()
    assert len(cats) == 1 + 6*2 and cats[0].startswith("model,mode,method,category,n,hit")
    assert len(s["faithfulness"]) == 4 and all(f["n_maps"] > 0 for f in s["faithfulness"])
    m = json.loads((rd.metrics/"gradcam.json").read_text())
    assert m["data"] == "synthetic world" and m["n_images"] == 3 and set(m["per_category"]["blip/lora/crossattn"]) == {"ship", "harbor"}
    assert sorted(p.name for p in rd.figures.glob("fig9_gradcam_*.png")) == ["fig9_gradcam_blip_1.png", "fig9_gradcam_qwen2-vl_1.png"]
    assert rd.stage_complete("13_gradcam")
    g = run_stage(rd, n_images=2, answers="generated", n_figure=0, n_random=0, max_new_tokens=6)   # the models' own answers
    assert g["answers"] == "generated" and len(g["results"]) == 6 and g["faithfulness"] == []
    for r in g["results"]:     # only words naming a category present count: a random tiny model may name none
        assert r["n_words"] >= 0 and (r["pointing_acc"] is None) == (r["n_words"] == 0)
    with pytest.raises(Exception, match="answers must be"): run_stage(rd, answers="mine")
    with pytest.raises(Exception, match="n_images must be a positive integer"): run_stage(rd, n_images=0)


def test_stage_without_boxes_says_not_computed(tmp_path):
    "A paper-profile run with no COCO annotations: the table says not computed and why; no number is written."
    rd = open_run(tmp_path/"run", "paper", models=[])
    rd.write_manifest("10_finetune", [])      # the paper profile needs no 03_synthetic
    s = run_stage(rd)
    assert s["computed"] is False and "no COCO detection annotations" in s["reason"]
    md = (rd.tables/"gradcam_pointing.md").read_text()
    assert md.startswith("**Not computed**") and "0." not in md
    assert json.loads((rd.metrics/"gradcam.json").read_text())["computed"] is False


def test_stage_paper_profile_with_sardet_boxes_under_data_root(tmp_path):
    "Paper profile: weights from model_paths, the adapter on them, SARDet-100K's COCO file and JPEGImages under data_root."
    from sarlang_nb.finetune import finetune
    from sarlang_nb.testing import demo_dataset
    dr = tmp_path/"release"; (dr/"SARDet-100K"/"JPEGImages"/"test").mkdir(parents=True)
    a = (np.random.default_rng(0).random((96, 160))*60).astype(np.uint8); a[10:30, 100:140] = 250
    Image.fromarray(a).save(dr/"SARDet-100K"/"JPEGImages"/"test"/"0000007.jpg")
    write_json(dr/"SARDet-100K"/"Annotations"/"test.json", dict(
        images=[dict(id=7, file_name="0000007.jpg", width=160, height=96)],
        annotations=[dict(id=1, image_id=7, category_id=3, bbox=[100, 10, 40, 20], area=800, iscrowd=0)],
        categories=[dict(id=3, name="ship")]))
    load_vlm("llava-1.5").save_base(tmp_path/"weights")
    rd = open_run(tmp_path/"run", "paper", models=["llava-1.5"], data_root=str(dr), device="cpu",
                  model_paths={"llava-1.5": str(tmp_path/"weights")})
    files = demo_dataset(tmp_path/"demo", 8)
    finetune("llava-1.5", [files["vqa_train"]], rd.models("llava-1.5")/"lora", model_path=tmp_path/"weights", recipe="smoke",
             max_steps=2, batch_size=2, save_steps=100)
    rd.write_manifest("10_finetune", [])
    s = run_stage(rd, n_random=1)
    assert s["computed"] and s["data"] == "release" and s["n_images"] == 1
    assert [(r["mode"], r["n_words"]) for r in s["results"]] == [("zero-shot", 1), ("lora", 1)]
    assert s["results"][0]["energy_chance"] == pytest.approx(800/(160*96))             # box-area share of the whole image
    assert (rd.figures/"fig9_gradcam_llava-1.5_1.png").exists()


def test_stage_paper_profile_names_the_missing_stage(tmp_path):
    rd = open_run(tmp_path/"run", "paper", models=[])
    with pytest.raises(Exception, match="10_finetune"): run_stage(rd)


def test_cli_bad_input(tmp_path, capsys):
    "Missing images, no images, an unknown method: exit 1 naming the problem; a malformed number: exit 2; one bad image among good ones: exit 3."
    Image.new("RGB", (64, 48), (30, 60, 90)).save(tmp_path/"a.png")
    (tmp_path/"bad.png").write_bytes(b"not an image")
    assert main(["--images", str(tmp_path/"missing.png"), "--out", str(tmp_path/"o")]) == 1
    assert "missing.png: image not found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path/"o")]) == 1 and "nothing to explain" in capsys.readouterr().err
    assert main(["--images", str(tmp_path/"a.png"), "--out", str(tmp_path/"o"), "--method", "saliency"]) == 1
    assert "--method must be one of" in capsys.readouterr().err
    assert main(["--images", str(tmp_path/"a.png"), "--out", str(tmp_path/"o"), "--model", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["--run", str(tmp_path)]) == 1 and "not a run folder" in capsys.readouterr().err
    assert main(["--images", str(tmp_path/"a.png"), "--batch-size", "two"]) == 2
    rc = main(["--images", str(tmp_path/"a.png"), str(tmp_path/"bad.png"), "--out", str(tmp_path/"o"), "--model", "blip",
               "--answer", "a ship", "--method", "crossattn"])
    err = capsys.readouterr().err
    assert rc == 3 and "sarlang-gradcam: error:" in err and "bad.png" in err and "a.png" not in err.replace("bad.png", "")
    j = json.loads((tmp_path/"o"/"maps.json").read_text())
    assert j["items"][0]["words"] == ["a", "ship"] and j["items"][0]["grid_shape"] == [2, 8, 8] and len(j["failed"]) == 1
    assert np.load(tmp_path/"o"/"maps.npz")["map_0"].shape == (2, 8, 8) and len(list((tmp_path/"o").glob("*.png"))) == 1


def test_console_script(cli, tmp_path):
    r = cli("sarlang-gradcam", "--images", tmp_path/"missing.png", "--out", tmp_path/"o")
    assert r.returncode == 1 and "sarlang-gradcam: error:" in r.stderr and "Traceback" not in r.stderr
