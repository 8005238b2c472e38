"""VQA from detection boxes (05_vqa): answers checked against the boxes by independent code, CLI, bad input."""
import json, os, re, subprocess, sys, types
from collections import Counter, defaultdict
from pathlib import Path
import pytest
from sarlang_nb.core import shared_data, SarlangError
from sarlang_nb import vqa

os.environ["SARLANG_PROGRESS"] = "0"
CATS = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
PL = {"ship": "ships", "aircraft": "aircraft", "car": "cars", "tank": "tanks", "bridge": "bridges", "harbor": "harbors"}

@pytest.fixture(scope="module")
def real():
    sd = shared_data()
    if sd is None or not (sd/"real_sar_det"/"annotations_coco.json").exists():
        pytest.skip("../shared/data/real_sar_det is not beside the checkout")
    p = sd/"real_sar_det"/"annotations_coco.json"
    d = json.loads(p.read_text())
    name = {c["id"]: c["name"] for c in d["categories"]}
    stem = {im["id"]: im["file_name"].rsplit(".", 1)[0] for im in d["images"]}
    size = {stem[im["id"]]: (im["width"], im["height"]) for im in d["images"]}
    boxes = defaultdict(list)
    for a in d["annotations"]: boxes[stem[a["image_id"]]].append((name[a["category_id"]], a["bbox"]))
    return p, boxes, size

def _cat_in(q):
    "The category a question is about (by its singular or plural word)."
    words = re.findall(r"[a-z]+", q.lower())
    hits = [c for c in CATS if c in words or PL[c] in words]
    assert len(hits) == 1, q
    return hits[0]

def _pos(cx, cy, W, H):   # the notebook's rule, re-stated
    u, v = cx/W, cy/H
    if 1/3 < u < 2/3 and 1/3 < v < 2/3: return "Center"
    if abs(u - .5) >= abs(v - .5): return "Left" if u < .5 else "Right"
    return "Top" if v < .5 else "Bottom"

@pytest.mark.parametrize("coords", ["pixel", "norm1000"])
def test_real_answers_agree_with_boxes(real, coords):
    p, boxes, size = real
    recs = list(vqa.vqa_records(p, seed=3, coords=coords))
    seen = Counter(r["qtype"] for r in recs)
    assert set(seen) == set(vqa.QTYPES)   # every question type occurs on the real data
    for r in recs:
        b, (W, H), q, a = boxes[r["image_id"]], size[r["image_id"]], r["question"], r["answer"]
        assert r["application"] == vqa.QTYPES[r["qtype"]] and r["source"] == "sardet"
        n = Counter(c for c, _ in b)
        if r["qtype"] == "count":
            assert int(a) == n[_cat_in(q)]                                   # the exact box count
        elif r["qtype"] in ("presence", "absence"):
            assert a == ("Yes" if n[_cat_in(q)] > 0 else "No")               # presence
        elif r["qtype"] == "other_categories":
            assert a == ("Yes" if len(n) > 1 else "No")
        elif r["qtype"] == "main_object":
            assert n[a] == max(n.values())                                   # the majority category
        elif r["qtype"] == "category_list":
            assert set(a.split(", ")) == set(n)
        elif r["qtype"] == "region":
            k = json.loads(q[q.index("["):q.index("]") + 1])
            def corners(x, y, w, h):
                if coords == "pixel": return [round(x), round(y), round(x + w), round(y + h)]
                return [min(999, int(x*1000/W)), min(999, int(y*1000/H)), min(999, int((x + w)*1000/W)), min(999, int((y + h)*1000/H))]
            cats = {c for c, bb in b if corners(*bb) == k}
            assert cats == {a}                                               # the box's category
            assert all(0 <= v <= (999 if coords == "norm1000" else max(W, H)) for v in k)
        elif r["qtype"] == "position":
            c = _cat_in(q)
            pos = Counter(_pos(x + w/2, y + h/2, W, H) for cc, (x, y, w, h) in b if cc == c).most_common()
            assert a == pos[0][0] and (len(pos) == 1 or pos[0][1] > pos[1][1])
        elif r["qtype"] == "presence_region":
            c = _cat_in(q)
            reg = next(k for k, w in vqa._REGION_WORDS.items() if f"the {w} of" in q)
            assert a == ("Yes" if any(_pos(x + w/2, y + h/2, W, H) == reg for cc, (x, y, w, h) in b if cc == c) else "No")
    # every image with boxes has a counting question per category present
    assert seen["count"] == sum(len({c for c, _ in b}) for b in boxes.values())

def test_deterministic_and_seeded(real):
    p = real[0]
    a, b, c = (list(vqa.vqa_records(p, seed=s)) for s in (0, 0, 1))
    assert a == b and a != c
    assert isinstance(vqa.vqa_records(p), types.GeneratorType)   # streamed, not built in memory

def test_prefix_and_types(real):
    p = real[0]
    recs = list(vqa.vqa_records(p, prefix=True, qtypes=["count", "position"]))
    assert {r["qtype"] for r in recs} == {"count", "position"}
    for r in recs:
        assert r["question"].startswith(vqa.POSITION_PREFIX if r["qtype"] == "position" else vqa.CLASS_PREFIX)
    with pytest.raises(SarlangError, match="unknown question types"): list(vqa.vqa_records(p, qtypes=["colour"]))

def _coco(tmp_path, anns, cats=CATS, name="test.json"):
    p = tmp_path/name
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "0000001.png", "width": 300, "height": 300},
                                        {"id": 2, "file_name": "sub/0000002.bmp", "width": 200, "height": 100}],
                             "annotations": anns, "categories": [{"id": 10 + i, "name": n} for i, n in enumerate(cats)]}))
    return p

def test_cli_formats(tmp_path):
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 10, "bbox": [10, 140, 20, 20]},
                         {"image_id": 1, "category_id": 10, "bbox": [50, 140, 20, 20]},
                         {"image_id": 1, "category_id": 13, "bbox": [250, 20, 30, 30]},
                         {"image_id": 2, "category_id": 11, "bbox": [90, 40, 20, 20]}])
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl"), "--image-template", "SARimages/{stem}.png", "--seed", "5"]) == 0
    recs = [json.loads(l) for l in (tmp_path/"o.jsonl").read_text().splitlines()]
    assert {r["split"] for r in recs} == {"test"} and {r["image"] for r in recs} == {"SARimages/0000001.png", "SARimages/0000002.png"}
    by = {(r["image_id"], r["qtype"], _cat_in(r["question"]) if r["qtype"] in ("count", "position") else ""): r["answer"] for r in recs}
    assert by[("0000001", "count", "ship")] == "2" and by[("0000001", "count", "tank")] == "1"
    assert by[("0000001", "position", "ship")] == "Left" and by[("0000001", "position", "tank")] == "Right"
    assert by[("0000002", "position", "aircraft")] == "Center" and by[("0000001", "main_object", "")] == "ship"
    for fmt in ("sharegpt", "llava"):
        assert vqa.main([str(p), "--out", str(tmp_path/f"o.{fmt}.json"), "--format", fmt, "--seed", "5"]) == 0
        data = json.loads((tmp_path/f"o.{fmt}.json").read_text())
        assert len(data) == len(recs)
        if fmt == "sharegpt":
            assert data[0]["messages"][1]["role"] == "assistant" and data[0]["images"] == ["0000001.png"]
            assert [d["messages"][1]["content"] for d in data] == [r["answer"] for r in recs]
        else:
            assert data[0]["conversations"][0]["from"] == "human" and "<image>" in data[0]["conversations"][0]["value"]
    assert vqa.main([str(p), "--out", str(tmp_path/"n.jsonl"), "--coords", "norm1000", "--split", "none"]) == 0
    recs = [json.loads(l) for l in (tmp_path/"n.jsonl").read_text().splitlines()]
    assert "split" not in recs[0]
    reg = [r["question"] for r in recs if r["qtype"] == "region" and r["image_id"] == "0000002"]
    assert reg and all("[450, 400, 550, 600]" in q for q in reg)

def test_console_script_help():
    exe = Path(sys.executable).parent/"sarlang-vqa"
    if not exe.exists(): pytest.skip("sarlang-vqa is not installed in this environment")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "norm1000" in out.stdout and "sharegpt" in out.stdout

@pytest.mark.parametrize("bad,msg", [
    ({"image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}, "unknown category_id 99"),
    ({"image_id": 7, "category_id": 10, "bbox": [0, 0, 1, 1]}, "unknown image_id 7"),
    ({"image_id": 1, "category_id": 10, "bbox": [0, 0, 1]}, "bbox must be 4 numbers"),
    ({"image_id": 1, "category_id": 10, "bbox": [0, 0, -1, 3]}, "negative size"),
    ({"image_id": 1, "category_id": 10, "bbox": [0, float("nan"), 1, 3]}, "non-finite value"),   # NaN as Python's json writes it
    ({"image_id": 1, "bbox": [0, 0, 1, 1]}, "has no 'category_id'"),
])
def test_bad_input(tmp_path, capsys, bad, msg):
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 10, "bbox": [1, 1, 2, 2]}, bad])
    with pytest.raises(SarlangError, match=re.escape(msg)) as e: vqa.load_coco(p)
    assert "annotations[1]" in str(e.value) and str(p) in str(e.value)
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl")]) == 1        # bad input: 1 (HELPERS' exit codes)
    assert msg in capsys.readouterr().err and not (tmp_path/"o.jsonl").exists()

def test_bad_files(tmp_path):
    with pytest.raises(SarlangError, match="file not found"): vqa.load_coco(tmp_path/"none.json")
    (tmp_path/"x.json").write_text("{not json")
    with pytest.raises(SarlangError, match="invalid JSON"): vqa.load_coco(tmp_path/"x.json")
    (tmp_path/"y.json").write_text("[]")
    with pytest.raises(SarlangError, match="not a COCO detection file"): vqa.load_coco(tmp_path/"y.json")
    (tmp_path/"z.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(SarlangError, match="z.jsonl row 2"): list(vqa.read_jsonl(tmp_path/"z.jsonl"))

def test_negative_counts_are_clear_errors(tmp_path, capsys):
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 10, "bbox": [1, 1, 2, 2]}])
    for flag in ("--n-absent", "--n-regions"):
        assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl"), flag, "-1"]) == 1
        assert "must be >= 0" in capsys.readouterr().err and not (tmp_path/"o.jsonl").exists()

def test_categories_read_from_file(tmp_path):
    "Ids are taken from `categories`, names are not assumed to be SARDet's."
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 11, "bbox": [1, 1, 5, 5]}], cats=["vessel", "plane"])
    recs = list(vqa.vqa_records(p, n_absent=5))
    assert {r["answer"] for r in recs if r["qtype"] == "main_object"} == {"plane"}
    assert [r["answer"] for r in recs if r["qtype"] == "absence" and r["image_id"] == "0000001"] == ["No"]

@pytest.mark.parametrize("tpl,msg", [("SARimages/{name}.png", "unknown field {name}"), ("SARimages/{stem}.png}", "Single '}'"),
                                     ("{stem", "expected '}'"), ("{}.png", "positional field"), ("{stem:d}", "Unknown format code")])
def test_bad_image_template_is_a_clear_error(tmp_path, capsys, tpl, msg):
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 10, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(SarlangError, match=re.escape(msg)): list(vqa.vqa_records(p, image_template=tpl))
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl"), "--image-template", tpl]) == 1
    err = capsys.readouterr().err
    assert msg in err and "{file_name} {stem} {id} {split}" in err and not (tmp_path/"o.jsonl").exists()
    assert [r["image"] for r in vqa.vqa_records(p, image_template="{split}/{id:07d}.png{{x}}", split="train")][0] == "train/0000001.png{x}"


@pytest.mark.parametrize("prefix", [False, True])
def test_guessed_application_agrees_with_the_generator(real, prefix):
    "A VQA_result.csv carries no application: the guess from the wording must give back what 05_vqa assigned."
    from sarlang_nb.prompts import guess_application
    recs = list(vqa.vqa_records(real[0], seed=1, prefix=prefix))
    wrong = [(r["question"], r["answer"], r["application"]) for r in recs
             if guess_application(r["question"], r["answer"]) != r["application"]]
    assert len({r["qtype"] for r in recs}) >= 8 and not wrong, wrong[:5]
    wrong = [r["question"] for r in recs if guess_application(r["question"]) != r["application"]]   # without the answer
    assert not wrong, wrong[:5]


def test_coco_paths_that_leave_the_dataset_and_boxes_outside_the_image_are_refused(tmp_path):
    from sarlang_nb.vqa import load_coco
    base = {"categories": [{"id": 0, "name": "ship"}]}
    for fn in ("../../etc/passwd", "/etc/passwd", "a/../../b.jpg", "C:/x.jpg"):
        (tmp_path/"c.json").write_text(json.dumps({**base, "images": [{"id": 1, "file_name": fn, "width": 100, "height": 100}], "annotations": []}))
        with pytest.raises(SarlangError, match=r"images\[0\]: file_name .* leaves the dataset"): load_coco(tmp_path/"c.json")
    img = [{"id": 1, "file_name": "0000001.jpg", "width": 100, "height": 100}]
    (tmp_path/"c.json").write_text(json.dumps({**base, "images": img, "annotations": [{"image_id": 1, "category_id": 0, "bbox": [500, 500, 10, 10]}]}))
    with pytest.raises(SarlangError, match=r"annotations\[0\]: bbox .* lies outside its 100x100 image"): load_coco(tmp_path/"c.json")
    (tmp_path/"c.json").write_text(json.dumps({**base, "images": img, "annotations": [{"image_id": 1, "category_id": 0, "bbox": [-2, 90, 12, 12]}]}))
    assert load_coco(tmp_path/"c.json")[1][0].boxes == [("ship", -2.0, 90.0, 12.0, 12.0)]   # a small overhang is kept


def _cli(*args):
    exe = Path(sys.executable).parent/"sarlang-vqa"
    if not exe.exists(): pytest.skip("sarlang-vqa is not installed in this environment")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env={**os.environ, "SARLANG_PROGRESS": "0"})

@pytest.mark.parametrize("image,ann,msg", [
    ({"file_name": "../../etc/passwd"}, [], r"row images\[0\]: file_name '../../etc/passwd' leaves the dataset"),
    ({}, [{"image_id": 1, "category_id": 0, "bbox": [5000, 40, 10, 10]}], r"row annotations\[0\]: bbox \[5000, 40, 10, 10\] lies outside its 100x100 image '0000001.jpg'"),
])
def test_cli_refuses_paths_leaving_the_dataset_and_boxes_outside_their_image(tmp_path, image, ann, msg):
    "Issue 17: `sarlang-vqa` wrote records for these; now exit 1, one line naming the file and the entry, no output."
    img = {"id": 1, "file_name": "0000001.jpg", "width": 100, "height": 100, **image}
    p = tmp_path/"train.json"
    p.write_text(json.dumps({"images": [img], "annotations": ann, "categories": [{"id": 0, "name": "ship"}]}))
    r = _cli(p, "--out", tmp_path/"o.jsonl")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.match(rf"sarlang-vqa: error: {re.escape(str(p))} {msg}", r.stderr), r.stderr
    assert not (tmp_path/"o.jsonl").exists()

def test_usage_errors_exit_2(tmp_path):
    p = _coco(tmp_path, [{"image_id": 1, "category_id": 10, "bbox": [1, 1, 2, 2]}])
    assert vqa.main([str(p)]) == 2                                               # --out missing
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl"), "--coords", "grid"]) == 2
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl"), "--n-absent", "x"]) == 2

def test_duplicate_annotations_are_reported_and_counted_once(tmp_path, capsys):
    "Issue 17 (duplicate rows pass silently): a box annotated twice counted twice; now it is counted once and reported."
    box = {"image_id": 1, "category_id": 10, "bbox": [10, 140, 20, 20]}
    p = _coco(tmp_path, [box, {"image_id": 1, "category_id": 10, "bbox": [50, 140, 20, 20]}, dict(box), dict(box)])
    dups = []
    _, imgs = vqa.load_coco(p, dups)
    assert dups == [(2, 0), (3, 0)] and len(imgs[0].boxes) == 2
    assert vqa.main([str(p), "--out", str(tmp_path/"o.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "2 duplicate annotation(s) skipped" in err and "annotations[2] repeats annotations[0]" in err
    recs = list(vqa.read_jsonl(tmp_path/"o.jsonl"))
    assert {r["answer"] for r in recs if r["qtype"] == "count" and r["image_id"] == "0000001"} == {"2"}

def test_a_folder_for_the_coco_file_is_a_clear_error(tmp_path):
    "It was an IsADirectoryError traceback."
    r = _cli(tmp_path, "--out", tmp_path/"o.jsonl")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "is a folder; give a COCO detection json file" in r.stderr, r.stderr

def test_stage_fails_when_it_makes_no_record(tmp_path):
    "Issue 17 (a stage run on empty input is marked complete with no outputs): an annotation file without images -> no manifest."
    from sarlang_nb.core import RunDir
    rd = RunDir(tmp_path/"run").create(); rd.write_config({"profile": "paper", "workflow": "rebuild"})
    (rd.annotations/"train.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 0, "name": "ship"}]}))
    with pytest.raises(SarlangError, match="no VQA record was made"): vqa.run_stage(rd, sardet_annotations=rd.annotations)
    assert rd.manifest("05_vqa") is None
