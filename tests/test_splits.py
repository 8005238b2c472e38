"Splits: the smoke run end to end through sarlang-split, stability when images are added, leakage caught, bad input."
import csv, json, os, shutil
from pathlib import Path
import pytest
from sarlang_nb.core import SarlangError, open_run, RunDir, write_json
from sarlang_nb import splits as SP, records as R
from sarlang_nb.testing import demo_records

os.environ["SARLANG_PROGRESS"] = "0"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A small smoke run (30 scenes) with its records, split once."
    rd = open_run(tmp_path_factory.mktemp("split")/"run", "smoke", n_scenes=30)
    SP.split_run(rd)
    return rd


def _image_splits(rd):
    return {r["image_id"]: r["split"] for r in csv.DictReader(open(rd.path/"splits"/"image_splits.csv"))}


def test_smoke_run_split_rules_and_layout(run):
    from sarlang_nb.synthetic import load_scenes
    scenes = {s["id"]: s for s in load_scenes(run)}
    per = {r["image_id"]: r for r in csv.DictReader(open(run.path/"splits"/"image_splits.csv"))}
    for k, r in per.items():
        if scenes[k]["source"] == "sardet": assert (r["rule"], r["split"]) == ("sardet", scenes[k]["split"])   # source split kept
        else: assert (r["rule"], r["split"]) == ("caption", SP.hash_split(k, run.config["seed"]))        # 7:3 hash split
        assert len(r["sha256"]) == 64
    rel = R.load_release(run.path, check_images=False)
    for kind in ("captions", "vqa"):
        assert rel[kind] and all(r["split"] == per[SP.image_key(r)]["split"] for r in rel[kind])
    test1 = R.read_captions(run.path/"Text/caption/Caption_test1.csv")
    assert test1 and {r["style"] for r in test1} == {"concise"} and {r["split"] for r in test1} == {"test"}
    assert {r["source"] for r in R.read_vqa(run.path/"Text/VQA/train/SARVQA1_train.json")} == {"sardet"}
    assert {r["source"] for r in R.read_vqa(run.path/"Text/VQA/test/SARVQA2_test.json")} <= {"paired"}
    info = json.loads((run.path/"dataset_info.json").read_text())
    for v in info.values():               # LLaMA-Factory can load every registered file as it is
        recs = json.loads((run.path/v["file_name"]).read_text())
        assert v["formatting"] == "sharegpt" and all(set(r) >= {"messages", "images"} for r in recs)
    rep = json.loads((run.path/"tables/leakage_report.json").read_text())
    assert rep["ok"] and rep["images_in_both_splits"] == 0 and rep["unhashed_images"] == 0
    assert run.stage_complete("07_splits")
    md = (run.path/"tables/table6_splits.md").read_text()
    assert "| caption images |" in md and "paper train" not in md


def test_cli_run_is_idempotent_and_paper_table(run, cli):
    before = {p: p.read_bytes() for p in (run.path/"Text").rglob("*") if p.is_file() and "records" not in p.parts}
    r = cli("sarlang-split", "run", run.path, "--profile", "paper")
    assert r.returncode == 0, r.stderr
    assert "| caption images |" in r.stdout and "9,341" in r.stdout and SP.NOT_TRANSCRIBED in r.stdout
    after = {p: p.read_bytes() for p in before}
    assert after == before                 # same records, same seed: byte-identical release


def test_adding_ten_percent_more_images_keeps_old_splits(run, tmp_path):
    rd = RunDir(tmp_path/"grown"); shutil.copytree(run.path, rd.path)
    old = _image_splits(rd)
    recs = rd.path/"Text/records"
    caps = [json.loads(l) for l in (recs/"captions.jsonl").read_text().splitlines() if l.strip()]
    extra_ids = [f"{9000000 + i:07d}" for i in range(max(1, len(old) // 10))]
    more = [dict(caps[i % len(caps)], image=f"SARimages/{k}.png", image_id=k) for i, k in enumerate(extra_ids)]
    R.write_json_records(recs/"captions.jsonl", caps + more)
    SP.split_run(rd)
    new = _image_splits(rd)
    assert set(new) == set(old) | set(extra_ids)
    assert {k: new[k] for k in old} == old


def test_leakage_by_content_is_caught(run, tmp_path, cli):
    rd = RunDir(tmp_path/"leaky"); shutil.copytree(run.path, rd.path)
    per = _image_splits(rd)
    a = next(k for k, s in per.items() if s == "test")
    # an image that is a byte copy of a test image, captioned under a new id that hashes to train
    new = next(f"{8000000 + i:07d}" for i in range(100) if SP.hash_split(f"{8000000 + i:07d}", rd.config["seed"]) == "train")
    src = SP.find_image_file(rd.path, {"image": f"SARimages/{a}.png"})
    shutil.copy(src, rd.path/"SARimages"/f"{new}.png")
    recs = rd.path/"Text/records"
    caps = [json.loads(l) for l in (recs/"captions.jsonl").read_text().splitlines() if l.strip()]
    R.write_json_records(recs/"captions.jsonl", caps + [dict(caps[0], image=f"SARimages/{new}.png", image_id=new)])
    r = cli("sarlang-split", "run", rd.path)
    assert r.returncode == 1 and "LEAKAGE" in r.stderr and "identical image files" in r.stderr and new in r.stderr


def test_check_detects_a_hand_edited_release(run, tmp_path, cli):
    root = tmp_path/"rel"; shutil.copytree(run.path, root)
    assert cli("sarlang-split", "check", root).returncode == 0
    # copy one test question (with its image) into the training file
    te = json.loads((root/"Text/VQA/test/SARVQA1_test.json").read_text())
    tr_p = root/"Text/VQA/train/SARVQA1_train.json"
    tr = json.loads(tr_p.read_text()); tr.append(te[0]); tr_p.write_text(json.dumps(tr))
    r = cli("sarlang-split", "check", root)
    assert r.returncode == 1 and "in both train and test" in r.stderr


def test_bad_records(tmp_path, cli):
    caps, vqa = demo_records(10, 4)
    bad = [dict(r, split=None) if r["source"] == "sardet" else r for r in vqa]
    R.write_json_records(tmp_path/"v.jsonl", bad)
    r = cli("sarlang-split", "records", "--vqa", tmp_path/"v.jsonl", "--out", tmp_path/"out")
    assert r.returncode == 1 and "keep their source split" in r.stderr
    (tmp_path/"broken.jsonl").write_text('{"image": "SARimages/0000001.png", "question": "q?", "answer": "a"}\n{oops\n')
    r = cli("sarlang-split", "records", "--vqa", tmp_path/"broken.jsonl", "--out", tmp_path/"out")
    assert r.returncode == 1 and "broken.jsonl" in r.stderr
    r = cli("sarlang-split", "records", "--out", tmp_path/"out")
    assert r.returncode == 1 and "--captions and/or --vqa" in r.stderr
    with pytest.raises(SarlangError, match="row 1: caption record .* split 'val'"): SP.check_leakage([dict(caps[0], split="val")], [])
    first_sardet = next(i for i, r in enumerate(bad, 1) if r["source"] == "sardet")
    with pytest.raises(SarlangError, match=f"row {first_sardet}: SARDet-derived vqa record"): SP.image_splits([], bad)
    assert cli("sarlang-split", "--help").returncode == 0


def test_records_cli_writes_layout_and_require_images(tmp_path, cli):
    caps, vqa = demo_records(20, 6)
    R.write_json_records(tmp_path/"c.jsonl", caps); R.write_json_records(tmp_path/"v.jsonl", vqa)
    r = cli("sarlang-split", "records", "--captions", tmp_path/"c.jsonl", "--vqa", tmp_path/"v.jsonl", "--out", tmp_path/"rel", "--seed", "3")
    assert r.returncode == 0, r.stderr
    rel = R.load_release(tmp_path/"rel")
    assert len(rel["captions"]) == len(caps) and len(rel["vqa"]) == len(vqa)
    assert {r["split"] for r in rel["captions"] if r["image_id"] == "0000001"} == {SP.hash_split("0000001", 3)}
    r = cli("sarlang-split", "records", "--captions", tmp_path/"c.jsonl", "--out", tmp_path/"rel2", "--require-images")
    assert r.returncode == 1 and "image file(s) not found" in r.stderr


def test_paper_profile_finds_images_under_data_root(tmp_path):
    "Paper profile, rebuild workflow: records come from stages 05/06, images from the release folder (data_root)."
    import numpy as np
    from PIL import Image
    data = tmp_path/"release"; (data/"SARimages").mkdir(parents=True)
    caps, vqa = demo_records(12, 4)
    for r in caps + vqa:
        p = data/r["image"]
        if not p.exists(): Image.fromarray(np.full((4, 4), int(r["image_id"]), np.uint8)).save(p)
    rd = open_run(tmp_path/"run", "paper", data_root=str(data), workflow="rebuild")
    R.write_json_records(rd.path/"Text/records/captions.jsonl", caps)
    R.write_json_records(rd.path/"Text/records/vqa.jsonl", vqa)
    with pytest.raises(SarlangError, match="needs stage 05_vqa, which has not completed"): SP.split_run(rd)
    rd.write_manifest("05_vqa", [rd.records/"vqa.jsonl"]); rd.write_manifest("06_captions", [rd.records/"captions.jsonl"])  # as if they ran
    res = SP.split_run(rd, require_images=True)
    assert res["report"]["hashed_images"] == 16 and res["report"]["unhashed_images"] == 0
    md = (rd.path/"tables/table6_splits.md").read_text()
    assert "paper train" in md and "9,341" in md


def test_sardet_val_annotations_become_test_images(tmp_path):
    """SARDet-100K's Annotations hold train.json, val.json (and test.json): box-derived VQA from all of them splits without error;
    val images go to test (the paper's counts: 14,497 test VQA images = 4,005 caption test images + 10,492 SARDet val images)."""
    from sarlang_nb import vqa as V
    ann = tmp_path/"Annotations"; ann.mkdir()
    for k, name in enumerate(("train", "val", "test")):
        write_json(ann/f"{name}.json", {"categories": [{"id": 0, "name": "ship"}],
            "images": [{"id": 10*k + i, "file_name": f"{10*k + i:07d}.jpg", "width": 64, "height": 64} for i in range(3)],
            "annotations": [{"id": 10*k + i, "image_id": 10*k + i, "category_id": 0, "bbox": [5, 5, 10, 10]} for i in range(3)]})
    recs = [r for f in sorted(ann.glob("*.json")) for r in V.vqa_records(f, split=V._auto_split(f, "auto"))]
    assert {r["split"] for r in recs} == {"train", "val", "test"}
    _, qa, per = SP.assign_splits([], recs)
    want = {f"{10*k + i:07d}": sp for k, sp in enumerate(("train", "test", "test")) for i in range(3)}
    assert {k: v[0] for k, v in per.items()} == want and {v[1] for v in per.values()} == {"sardet"}
    assert all(r["split"] == want[r["image_id"]] for r in qa)
    assert SP.check_leakage([], qa)["ok"]


def test_a_damaged_hash_cache_is_ignored(tmp_path):
    img = tmp_path/"a.png"; img.write_bytes(b"x")
    want = SP.content_hashes({"a": img})
    for content in ("null", "[]", '{"broken'):
        (tmp_path/"cache.json").write_text(content)
        assert SP.content_hashes({"a": img}, tmp_path/"cache.json") == want
        assert isinstance(json.loads((tmp_path/"cache.json").read_text()), dict)     # rewritten as a good cache


def test_duplicate_records_within_a_split_are_reported(tmp_path, cli):
    "Issue 17 (duplicate rows pass silently): a caption or QA record given twice is counted in the report and named on stderr."
    caps, vqa = demo_records(12, 4)
    R.write_json_records(tmp_path/"c.jsonl", caps + caps[:2]); R.write_json_records(tmp_path/"v.jsonl", vqa + vqa[-1:])
    r = cli("sarlang-split", "records", "--captions", tmp_path/"c.jsonl", "--vqa", tmp_path/"v.jsonl", "--out", tmp_path/"rel")
    assert r.returncode == 0, r.stderr
    assert "1 VQA record(s) (same image, question and answer) and 2 caption record(s)" in r.stderr
    rep = json.loads((tmp_path/"rel"/"tables"/"leakage_report.json").read_text())
    assert rep["duplicate_caption_records_within_split"] == 2 and rep["duplicate_qa_records_within_split"] == 1
    r = cli("sarlang-split", "check", tmp_path/"rel")
    assert r.returncode == 0 and "2 caption record(s)" in r.stderr, r.stderr
    R.write_json_records(tmp_path/"c1.jsonl", caps)
    r = cli("sarlang-split", "records", "--captions", tmp_path/"c1.jsonl", "--out", tmp_path/"rel1")
    assert r.returncode == 0 and "repeat within their split" not in r.stderr


def test_usage_errors_exit_2():
    assert SP.main([]) == 2 and SP.main(["nope"]) == 2 and SP.main(["check"]) == 2
    assert SP.main(["records", "--captions", "c.jsonl"]) == 2                    # --out is required
    assert SP.main(["run", "r", "--test-fraction", "x"]) == 2


def test_split_of_empty_record_files_fails(tmp_path):
    "Issue 17 (a stage run on empty input is marked complete): empty record files -> an error, no manifest, no layout."
    rd = RunDir(tmp_path/"run").create(); rd.write_config({"profile": "paper", "workflow": "rebuild"})
    for s in ("05_vqa", "06_captions"): rd.write_manifest(s, [])
    rd.records.mkdir(parents=True, exist_ok=True)
    (rd.records/"captions.jsonl").write_text(""); (rd.records/"vqa.jsonl").write_text("")
    with pytest.raises(SarlangError, match="hold no record: nothing to split"): SP.run_stage(rd)
    assert rd.manifest("07_splits") is None and not (rd.path/"dataset_info.json").exists()
