"The published tables (package data), the paper stage 15_paper and `sarlang-paper`."
import csv, json, subprocess, sys
from pathlib import Path
import pytest
from sarlang_nb.core import RunDir, SarlangError, read_json, write_json, repo_root
from sarlang_nb import paper
from sarlang_nb.paper import paper_table, paper_table3_values, make_demo_run, run_stage, PAPER_TABLES

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPTION = ROOT.parent/"shared"/"paper"/"tables"


# --- the published values -------------------------------------------------------------------------------------------

def test_package_data_is_the_transcription():
    if not TRANSCRIPTION.is_dir(): pytest.skip("../shared/paper/tables is not beside the checkout")
    for meta in PAPER_TABLES.values():
        src = TRANSCRIPTION/meta["file"]
        if src.exists(): assert (paper.paper_data_dir()/meta["file"]).read_bytes() == src.read_bytes(), meta["file"]
    assert sorted(p.name for p in TRANSCRIPTION.glob("*.csv")) == sorted(m["file"] for k, m in PAPER_TABLES.items() if k != "table11")

def test_every_cell_of_every_table_round_trips():
    "Numbers are cast, text is kept verbatim; an empty cell (printed '–' or lost) is None, never 0."
    for key, meta in PAPER_TABLES.items():
        t = paper_table(key)
        with open(paper.paper_data_dir()/meta["file"], newline="", encoding="utf-8") as f: raw = list(csv.DictReader(f))
        assert len(t) == len(raw) and t.columns == list(raw[0])
        for r, w in zip(t, raw):
            for k, v in w.items():
                if v == "": assert r[k] is None, (key, k)
                elif k in meta.get("floats", ()): assert r[k] == float(v)
                elif k in meta.get("ints", ()): assert r[k] == int(v) and isinstance(r[k], int)
                else: assert r[k] == v

def test_paper_table_values_and_names():
    assert paper_table("table7") == paper_table("Table 7") == paper_table(7) == paper_table("table7_captioning")
    t9 = paper_table(9)
    assert t9.where(model="SAR Experts")[0] == {"model": "SAR Experts", "params": None, "train_strategy": None, "accuracy": 57.76}
    assert paper_table(10).where(caption_type="Concise", preprocessed="yes")[0]["CIDEr"] == 6.25
    assert "Table 7" in paper_table(7).title and paper_table(7).units["CIDEr"].startswith("%")
    assert any("224.00" in c for c in paper_table(7).caveats)
    with pytest.raises(SarlangError, match="no published table"): paper_table("table0")

def test_table3_values_for_stage_08():
    v = paper_table3_values()
    assert len(v) == 13 and ("FUSAR-Map", "text") not in v
    assert v[("Ours (paired RGB)", "image")] == (0.16, 0.06, 13346) and v[("SARDet-100k", "image")] == (0.26, 0.13, 104985)

def test_loader_is_light():
    code = ("import sys, sarlang_nb.paper as p; p.paper_table('table8'); "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'transformers', 'statsmodels') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

def test_package_data_declared_for_the_wheel():
    text = (ROOT/"pyproject.toml").read_text()
    assert '"sarlang_nb" = ["paper_data/*.csv", "paper_data/README.md"' in text


# --- the stage on a made-up run ---------------------------------------------------------------------------------------

def _rows(path, **kw):
    with open(path, newline="", encoding="utf-8") as f: return [r for r in csv.DictReader(f) if all(r.get(k) == v for k, v in kw.items())]

def test_smoke_tables_never_put_paper_values_beside_ours(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    run_stage(rd, paper_figures=None)
    for key in ("3_similarity", "4_applications", "6_splits", "7_captioning", "8_vqa", "9_human", "10_preprocessing_captions", "11_preprocessing_vqa"):
        md = (rd.tables/f"paper_table{key}.md").read_text()
        assert "- **profile**: smoke" in md and "not comparable: smoke profile" in md, key
        # the main table has no 'source' column: the paper's rows are only in the block headed "not comparable"
        first = md.split("\n### ")[0]
        assert "| paper |" not in first, key
        for r in _rows(rd.tables/f"paper_table{key}.csv"): assert r["comparable"] == "no" and r["profile"] == "smoke"

def test_values_and_deltas_from_the_metric_files(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    run_stage(rd, paper_figures=None)
    t7 = _rows(rd.tables/"paper_table7_captioning.csv", source="this run")
    z = next(r for r in t7 if r["model"] == "blip" and r["caption type"] == "Concise" and r["train strategy"] == "Without Finetune")
    m = read_json(rd.metrics/"captions_blip_zero-shot_concise.json")
    assert float(z["CIDEr"]) == pytest.approx(100*m["CIDEr"]) and float(z["BLEU_4"]) == pytest.approx(100*m["Bleu_4"])
    md8 = (rd.tables/"paper_table8_vqa.md").read_text()
    lz, ll = (read_json(rd.metrics/f"vqa_qwen2-vl_{mo}.json")["accuracy"] for mo in ("zero-shot", "lora"))
    assert f"| this run | qwen2-vl | {100*(ll - lz):.2f} |" in md8
    assert "| paper | QWEN2-VL 7B | 40.22 |" in md8          # the paper's own gain, in its not-comparable block
    md11 = (rd.tables/"paper_table11_preprocessing_vqa.md").read_text()
    raw = read_json(rd.metrics/"vqa_qwen2-vl_lora-raw.json")["accuracy"]
    assert f"| this run | qwen2-vl lora | {100*(ll - raw):.2f} |" in md11 and "| paper (prose) | QWEN2.5-VL 3B zero-shot | 2.81 |" in md11
    assert "lora (main run)" in md11     # the preprocessed side is the main run's metrics, and the table says so

def test_comparable_run_puts_matching_paper_rows_beside_ours(tmp_path):
    rd = make_demo_run(tmp_path/"run", models=("qwen2-vl",))
    w = tmp_path/"weights"; w.mkdir()
    rd.write_config({**rd.config, "profile": "paper", "workflow": "release", "judge": "official", "model_paths": {"qwen2-vl": str(w)}})
    for mode in ("zero-shot", "lora"):
        f = rd.metrics/f"vqa_qwen2-vl_{mode}.json"; write_json(f, {**read_json(f), "judge": "official", "judge_model": "gpt-4o-mini"})
    write_json(rd.models("qwen2-vl")/"lora"/"sarlang_finetune.json", {"total_params": 8_291_375_616})
    run_stage(rd, paper_figures=None)
    t8 = _rows(rd.tables/"paper_table8_vqa.csv")
    assert {r["comparable"] for r in t8} == {"yes"}
    assert [(r["model"], r["weights"], r["train strategy"]) for r in t8 if r["source"] == "paper"] == \
           [("QWEN2-VL", "7B", "Without Finetune"), ("QWEN2-VL", "7B", "LoRA Finetune")]
    md = (rd.tables/"paper_table8_vqa.md").read_text()
    assert "| paper | QWEN2-VL 7B | 40.22 |" in md and "| paper | LLaVA1.5 7B |" not in md
    # the captions were scored the authors' way, so Table 7 is comparable too; Table 10 is not (the paper's ablation is QWEN2.5-VL zero-shot)
    assert "comparable with the paper**: yes" in (rd.tables/"paper_table7_captioning.md").read_text()
    assert "the paper's ablation is QWEN2.5-VL without fine-tuning only" in (rd.tables/"paper_table10_preprocessing_captions.md").read_text()

def test_comparability_reasons(tmp_path):
    rd = make_demo_run(tmp_path/"run", models=("qwen2-vl",))
    rd.write_config({**rd.config, "profile": "paper", "workflow": "rebuild", "judge": "rules"})
    why = paper.not_comparable(rd, ["qwen2-vl"], judge="rules", tokenize="ptb")
    assert len(why) == 4 and "rebuilt from sources" in why[0] and "--model-path qwen2-vl=DIR" in why[1] and "'rules'" in why[2] and "'ptb'" in why[3]

def test_missing_inputs_are_named_not_invented(tmp_path):
    rd = make_demo_run(tmp_path/"run", ablation=False)
    (rd.tables/"table3_similarity.csv").unlink()
    for f in rd.metrics.glob("captions_*"): f.unlink()
    run_stage(rd, paper_figures=None)
    t3 = (rd.tables/"paper_table3_similarity.md").read_text()
    assert "**missing**" in t3 and "08_similarity" in t3
    assert {r["source"] for r in _rows(rd.tables/"paper_table3_similarity.csv")} == {"paper"}
    t7 = (rd.tables/"paper_table7_captioning.md").read_text()
    assert "**missing**: caption metrics" in t7 and "12_metrics" in t7
    assert {r["source"] for r in _rows(rd.tables/"paper_table7_captioning.csv")} == {"paper"}
    m = rd.manifest("15_paper")
    assert set(m["missing"]) == {"paper_table3_similarity", "paper_table7_captioning", "paper_table9_human",
                                 "paper_table10_preprocessing_captions", "paper_table11_preprocessing_vqa"}

def test_paper_profile_names_a_missing_stage(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    rd.write_config({**rd.config, "profile": "paper"})
    (rd.manifests/"12_metrics.json").unlink()
    with pytest.raises(SarlangError, match="12_metrics"): run_stage(rd, paper_figures=None)

def test_table9_uses_the_kits_questions_and_the_human_scores(tmp_path):
    from sarlang_nb.human import make_kit, score_sheets, SHEET_COLUMNS
    from sarlang_nb.records import write_vqa_json
    rd = make_demo_run(tmp_path/"run")
    recs = [dict(image="SARimages/0000001.png", question="Is there any ship in this image?", answer="Yes", application="object identification"),
            dict(image="SARimages/0000001.png", question="How many ships are in the image?", answer="2", application="instance counting")]
    write_vqa_json(rd.vqa/"test"/"SARVQA2_test.json", recs)
    _, _, key_f = make_kit(rd.path, n=2)
    run_stage(rd, paper_figures=None)
    rows = _rows(rd.tables/"paper_table9_human.csv", source="this run")
    assert {(r["who"], r["train strategy"], r["correct"], r["N"]) for r in rows} == \
           {(m, s, "1", "2") for m in ("qwen2-vl", "blip") for s in ("Without Finetune", "LoRA Finetune")}   # the demo marks row 1 correct
    assert "no human answers scored yet" in (rd.tables/"paper_table9_human.md").read_text()
    sheet = tmp_path/"e.csv"
    items = read_json(key_f)["items"]
    sheet.write_text("item,answer\n" + "".join(f"{it['item']},{it['gt']}\n" for it in items))
    score_sheets(key_f, [("expert", sheet)])
    run_stage(rd, paper_figures=None)
    people = _rows(rd.tables/"paper_table9_human.csv", source="people")
    assert [(r["who"], r["correct"], r["N"], float(r["accuracy"])) for r in people] == [("expert (1 person)", "2", "2", 100.0)]
    assert "30 questions cannot separate 57.8 % from 63.3 %" in (rd.tables/"paper_table9_human.md").read_text()

def test_figures_and_the_copy(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    (rd.figures/"gradcam_blip_1.png").write_bytes((rd.sar_images/"0000001.png").read_bytes())
    outs = run_stage(rd, paper_figures=tmp_path/"pf")
    for f in ("fig8_qualitative.png", "fig_training_curves.png"):
        assert (rd.figures/f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path/"pf"/f).exists()
    assert (tmp_path/"pf"/"gradcam_blip_1.png").exists() and (tmp_path/"pf"/"README.md").exists()
    idx = (rd.tables/"paper_outputs.md").read_text()
    assert "gradcam_blip_1" in idx and "Fig. 9" not in idx       # found: not listed as missing
    assert "Fig. 5 (preprocessing steps): no figures/fig5" in idx
    logs = paper.training_logs(rd)
    assert sorted(logs) == ["blip", "qwen2-vl"] and [r["step"] for r in logs["blip"]] == [1, 2, 3, 4]
    ex, models = paper.qualitative_examples(rd, 4)
    assert models == ["qwen2-vl", "blip"] and [e["application"] for e in ex] == ["object identification", "instance counting", "image description"]
    assert ex[0]["answers"][("blip", "lora")] == "lora answer 0"

def test_default_paper_figures_is_the_checkouts():
    assert paper.default_paper_figures() == (repo_root()/"paper_figures" if repo_root() else None)

def test_stage_speed_budget_and_manifest(tmp_path):
    import time
    rd = make_demo_run(tmp_path/"run")
    t0 = time.time(); run_stage(rd, paper_figures=None); dt = time.time() - t0
    m = rd.manifest("15_paper")
    assert m["complete"] and len(m["tables"]) == 8 and m["data"] == "synthetic world" and m["paper_figures"] is None
    assert all((rd.path/o).exists() for o in m["outputs"])
    print(f"stage on the demo run: {dt:.1f} s")


# --- the console command ---------------------------------------------------------------------------------------------

def test_cli(tmp_path, cli):
    rd = make_demo_run(tmp_path/"run")
    r = cli("sarlang-paper", rd.path)
    assert r.returncode == 0, r.stderr
    assert str(rd.tables/"paper_table8_vqa.md") in r.stdout
    r = cli("sarlang-paper", tmp_path/"nope")
    assert r.returncode == 1 and "sarlang-paper: error:" in r.stderr and "not a run folder" in r.stderr and "Traceback" not in r.stderr
    r = cli("sarlang-paper")
    assert r.returncode == 2

def test_fig5_from_the_runs_raw_image(tmp_path):
    import numpy as np
    from PIL import Image
    from sarlang_nb.preprocess import preprocess
    rd = make_demo_run(tmp_path/"run")
    rng = np.random.default_rng(0)
    raw = (rng.gamma(1.0, 1.0, (40, 40))*np.where(np.arange(40) < 20, 0.2, 1.0)).astype(np.float32)
    import tifffile
    tifffile.imwrite(rd.sar_raw/"0000001.tif", raw)
    Image.fromarray(preprocess(rd.sar_raw/"0000001.tif")).save(rd.sar_images/"0000001.png")
    f = paper.plot_preprocessing(rd, tmp_path/"f5.png")
    assert f and f.read_bytes()[:4] == b"\x89PNG"
    run_stage(rd, paper_figures=None)
    assert (rd.figures/"fig5_preprocessing_steps.png").exists() and "Fig. 5" not in (rd.tables/"paper_outputs.md").read_text()
    (rd.sar_raw/"0000001.tif").unlink()
    assert paper.plot_preprocessing(rd, tmp_path/"none.png") is None

def test_rerun_keeps_every_output(tmp_path):
    "A second run of the stage writes (and copies) the same files as the first."
    rd = make_demo_run(tmp_path/"run")
    import numpy as np, tifffile
    from PIL import Image
    from sarlang_nb.preprocess import preprocess
    tifffile.imwrite(rd.sar_raw/"0000001.tif", np.random.default_rng(1).gamma(1.0, 1.0, (32, 32)).astype(np.float32))
    Image.fromarray(preprocess(rd.sar_raw/"0000001.tif")).save(rd.sar_images/"0000001.png")
    first = sorted(p.name for p in run_stage(rd, paper_figures=tmp_path/"pf"))
    second = sorted(p.name for p in run_stage(rd, paper_figures=tmp_path/"pf"))
    assert first == second and "fig5_preprocessing_steps.png" in second
    assert "**missing**: Fig. 5" not in (tmp_path/"pf"/"README.md").read_text()

def test_training_logs_prefer_the_model_card_history(tmp_path):
    rd = make_demo_run(tmp_path/"run", models=("qwen2-vl",))
    write_json(rd.models("qwen2-vl")/"lora"/"sarlang_finetune.json",
               {"log_history": [{"step": 10, "loss": 2.0, "learning_rate": 1e-4}, {"step": 20, "loss": 1.0, "learning_rate": 5e-5}, {"train_runtime": 3.0, "step": 20}]})
    assert paper.training_logs(rd) == {"qwen2-vl": [dict(step=10, loss=2.0, learning_rate=1e-4), dict(step=20, loss=1.0, learning_rate=5e-5)]}

def test_fig8_survives_an_unreadable_image(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    (rd.sar_images/"0000001.png").write_bytes(b"not a png")
    assert paper.plot_qualitative(rd, tmp_path/"f8.png").read_bytes()[:4] == b"\x89PNG"
