"Dataset formats: real COCO counts, malformed rows, path safety, round trips, the sarlang-convert CLI."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from sarlang_nb.core import SarlangError, shared_data, write_json, RunDir
from sarlang_nb import formats as F, coco as C, core, predictions, prompts, records

os.environ["SARLANG_PROGRESS"] = "0"


def _vqa(i, split="train", source="sardet", app="instance counting"):
    img = f"SARimages/{i:07d}.png" if source == "sardet" else f"SARimages/City_{i}.png"
    return records.vqa_record(img, f"How many ships are in image {i}?", str(i % 5), app, source, split=split, qtype="count")


def _cap(i, split="train", style="complex"):
    return records.caption_record(f"SARimages/City_{i}.png", f"Caption {i}, with a comma and \"quotes\"\nand a newline.", style,
                            split=split, captioner="offline", prompt_hash="h1")


def _key(r): return json.dumps(r, sort_keys=True)


# --- the real sample ---------------------------------------------------------------------------------------------

def test_real_coco_counts():
    sd = shared_data()
    if sd is None: pytest.skip("../shared/data not found beside the checkout")
    d = sd/"real_sar_det"
    coco = C.read_coco(d/"annotations_coco.json", image_root=d/"images")
    assert len(coco["images"]) == 43
    assert sum(len(im["boxes"]) for im in coco["images"]) == 217
    counts = C.coco_counts(coco)
    assert counts["ship"] == 191 and counts["aircraft"] == 26
    assert sum(counts.values()) == 217
    # category ids come from the file's `categories`, not from an assumed order
    raw = json.loads((d/"annotations_coco.json").read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    assert coco["categories"] == names
    for im in coco["images"]:
        assert (d/"images"/im["file_name"]).is_file()
        for b in im["boxes"]: assert b["category"] == names[b["category_id"]]
    # aircraft keep their fine type
    assert any("fine_category" in b for im in coco["images"] for b in im["boxes"] if b["category"] == "aircraft")


def test_coco_ids_not_assumed(tmp_path):
    # shuffled, non-contiguous category ids: names must follow the file
    c = {"images": [{"id": 1, "file_name": "0000001.jpg", "width": 10, "height": 10}],
         "annotations": [{"id": 5, "image_id": 1, "category_id": 40, "bbox": [0, 0, 2, 2]},
                         {"id": 6, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}],
         "categories": [{"id": 40, "name": "harbor"}, {"id": 7, "name": "ship"}]}
    write_json(tmp_path/"train.json", c)
    coco = C.read_coco(tmp_path/"train.json")
    assert [b["category"] for b in coco["images"][0]["boxes"]] == ["harbor", "ship"]
    assert C.coco_counts(coco) == {"harbor": 1, "ship": 1}


# --- malformed input names the file and row ----------------------------------------------------------------------

def test_malformed_json_record_names_row(tmp_path):
    p = tmp_path/"Text"/"VQA"/"train"/"SARVQA1_train.json"
    records.write_vqa_json(p, [_vqa(i) for i in range(5)])
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace('"role": "assistant"', '"role": "robot"')   # record 3
    p.write_text("\n".join(lines))
    with pytest.raises(SarlangError, match=r"SARVQA1_train\.json row 3: turn 1 has unknown role 'robot'"):
        list(records.iter_vqa(p))


def test_malformed_csv_row(tmp_path):
    p = tmp_path/"Caption_test.csv"
    p.write_text("image,caption\nSARimages/a.png,fine\nSARimages/b.png,\nSARimages/c.png,ok\n")
    with pytest.raises(SarlangError, match=r"Caption_test\.csv row 2: missing or empty 'caption'"):
        records.read_captions(p)
    p.write_text("image,caption\nSARimages/a.png,fine,extra\n")
    with pytest.raises(SarlangError, match=r"row 1: expected 2 columns as in the header, found 3"):
        records.read_captions(p)


def test_truncated_and_broken_json(tmp_path):
    p = tmp_path/"v.json"
    records.write_vqa_json(p, [_vqa(i) for i in range(3)])
    p.write_text(p.read_text()[:-40])
    with pytest.raises(SarlangError, match=r"v\.json row 3"):
        list(records.iter_vqa(p))
    p.write_text('{"images": ["a.png"], "question": "q", "answer": "a"}\n{broken\n')
    with pytest.raises(SarlangError, match=r"v\.json row 2: invalid JSON Lines record"):
        list(records.iter_vqa(p))


def test_bad_application_and_missing_image(tmp_path):
    p = tmp_path/"v.jsonl"
    p.write_text(json.dumps({"image": "a.png", "question": "q", "answer": "a", "application": "painting"}) + "\n")
    with pytest.raises(SarlangError, match="row 1: unknown application 'painting'"):
        records.read_vqa(p)
    p.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(SarlangError, match="row 1: record names no image"):
        records.read_vqa(p)


# --- path safety -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,msg", [("../secret.png", "contains '..'"), ("SARimages/../../x.png", "contains '..'"),
                                       ("/etc/passwd", "is absolute and not inside the dataset root"),
                                       ("C:\\Windows\\x.png", "is absolute")])
def test_path_escape_refused(tmp_path, image, msg):
    p = tmp_path/"v.jsonl"
    p.write_text(json.dumps({"image": "ok.png", "question": "q", "answer": "a"}) + "\n" +
                 json.dumps({"image": image, "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(SarlangError, match=r"v\.jsonl row 2: image path .*" + msg.replace("(", r"\(")):
        records.read_vqa(p, root=tmp_path)


def test_symlink_out_refused(tmp_path):
    root, out = tmp_path/"root", tmp_path/"elsewhere"
    (root/"SARimages").mkdir(parents=True); out.mkdir()
    (out/"x.png").write_bytes(b"png")
    (root/"SARimages"/"x.png").symlink_to(out/"x.png")
    (root/"SARimages"/"inside.png").write_bytes(b"png")
    (root/"SARimages"/"ok_link.png").symlink_to(root/"SARimages"/"inside.png")   # a link inside the root is fine
    p = root/"Text"/"VQA"/"train"/"SARVQA2_train.jsonl"; p.parent.mkdir(parents=True)
    p.write_text("".join(json.dumps({"image": f"SARimages/{n}", "question": "q", "answer": "a"}) + "\n"
                         for n in ("inside.png", "ok_link.png", "x.png")))
    with pytest.raises(SarlangError, match=r"row 3: image path 'SARimages/x\.png' leads outside the dataset root through a symlink"):
        records.read_vqa(p)
    assert len(records.read_vqa(p, allow_symlinks_out=True, check_images=True)) == 3
    # a symlinked folder
    (root/"SARimages"/"sub").symlink_to(out)
    with pytest.raises(SarlangError, match="through a symlink"):
        core.safe_image_path("SARimages/sub/x.png", root)
    # COCO file names are checked too
    write_json(tmp_path/"c.json", {"images": [{"id": 1, "file_name": "x.png"}], "annotations": [], "categories": []})
    with pytest.raises(SarlangError, match="images entry 0: .*symlink"):
        C.read_coco(tmp_path/"c.json", image_root=root/"SARimages")


def test_missing_image_with_check(tmp_path):
    p = tmp_path/"Caption_test.csv"
    records.write_caption_csv(p, [_cap(1, "test")])
    (tmp_path/"SARimages").mkdir()
    with pytest.raises(SarlangError, match=r"row 1: image 'SARimages/City_1\.png' not found"):
        records.read_captions(p, root=tmp_path, check_images=True)


# --- round trips -------------------------------------------------------------------------------------------------

def test_release_round_trip_records(tmp_path):
    vqa = [_vqa(i, sp, src, app) for i, (sp, src, app) in enumerate(
        [(sp, src, app) for sp in ("train", "test") for src in ("sardet", "paired") for app in prompts.APPLICATIONS])]
    caps = [_cap(i, sp, st) for i, (sp, st) in enumerate([(sp, st) for sp in ("train", "test") for st in records.CAPTION_STYLES for _ in range(3)])]
    counts = records.write_release(tmp_path, caps, vqa)
    assert counts["Text/caption/Caption-training.csv"] == 6 and counts["Text/caption/Caption_test.csv"] == 3
    assert counts["Text/VQA/test/SARVQA2_test.json"] == 7
    back = records.load_release(tmp_path)
    assert sorted(map(_key, back["vqa"])) == sorted(map(_key, vqa))
    assert sorted(map(_key, back["captions"])) == sorted(map(_key, caps))
    # writing again with fewer records leaves no stale records behind
    records.write_release(tmp_path, caps[:1], vqa[:1])
    back = records.load_release(tmp_path)
    assert (len(back["vqa"]), len(back["captions"])) == (1, 1)


@pytest.mark.parametrize("fmt", ["sharegpt", "llava", "records"])
@pytest.mark.parametrize("prompt,mix", [("paper", False), ("paper", True), ("raw", True)])
def test_vqa_format_round_trip(tmp_path, fmt, prompt, mix):
    vqa = [_vqa(i, "test", src, app) for i, (src, app) in enumerate([(s, a) for s in ("sardet", "paired") for a in prompts.APPLICATIONS])]
    records.write_vqa_json(tmp_path/"v.json", vqa, fmt, prompt, mix)
    assert records.read_vqa(tmp_path/"v.json", root=tmp_path) == vqa
    # without our provenance keys (what another tool may write), the raw question still comes back
    strip = {"sharegpt": ("messages", "images"), "llava": ("id", "image", "conversations"), "records": tuple(records.VQA_COLUMNS)}[fmt]
    objs = [{k: o[k] for k in strip if k in o} for o in json.loads((tmp_path/"v.json").read_text())]
    records.write_json_records(tmp_path/"bare.json", objs)
    back = records.read_vqa(tmp_path/"bare.json", root=tmp_path)
    assert [r["question"] for r in back] == [r["question"] for r in vqa]
    assert [r["answer"] for r in back] == [r["answer"] for r in vqa]


def test_sharegpt_is_llamafactory_shaped(tmp_path):
    records.write_release(tmp_path, [_cap(1)], [_vqa(1)])
    info = json.loads((tmp_path/"dataset_info.json").read_text())
    for name, ent in info.items():
        assert ent["formatting"] == "sharegpt" and ent["columns"] == {"messages": "messages", "images": "images"}
        recs = json.loads((tmp_path/ent["file_name"]).read_text())
        for r in recs:
            roles = [m["role"] for m in r["messages"]]
            assert roles == ["user", "assistant"] and r["messages"][0]["content"].count("<image>") == len(r["images"]) == 1
            assert (tmp_path/r["images"][0]).parent.name == "SARimages"
    v = json.loads((tmp_path/"Text/VQA/train/SARVQA1_train.json").read_text())[0]
    assert v["messages"][0]["content"] == "<image>" + prompts.vqa_prompt(v["question"])
    c = json.loads((tmp_path/"Text/caption/Caption-training.json").read_text())[0]
    assert c["messages"][0]["content"] == "<image>Describe the content of this image in one sentence."


def test_release_without_provenance_columns(tmp_path):
    "What the real release may hold: a headerless caption CSV, bare sharegpt VQA with bare image names."
    (tmp_path/"Text/caption").mkdir(parents=True); (tmp_path/"Text/VQA/test").mkdir(parents=True)
    (tmp_path/"Text/caption/Caption_test1.csv").write_text("France_Nice_3.png,Dense city blocks.\n0000012.jpg,A ship at sea.\n")
    (tmp_path/"Text/VQA/test/SARVQA1_test.json").write_text(json.dumps([
        {"messages": [{"role": "user", "content": "<image>Question: How many ships are there?. Answer the question concisely."},
                      {"role": "assistant", "content": "2"}], "images": ["0000012.jpg"]}]))
    rel = records.load_release(tmp_path)
    c = rel["captions"]
    assert [(r["image"], r["style"], r["split"], r["source"]) for r in c] == [
        ("SARimages/France_Nice_3.png", "concise", "test", "paired"), ("SARimages/0000012.jpg", "concise", "test", "sardet")]
    v = rel["vqa"][0]
    assert (v["question"], v["answer"], v["application"], v["source"], v["split"], v["image_id"]) == (
        "How many ships are there?", "2", "instance counting", "sardet", "test", "0000012")
    assert v["application_guessed"] is True


def test_synthetic_world_round_trip(tmp_path):
    syn = pytest.importorskip("sarlang_nb.synthetic", reason="03_synthetic not exported yet")
    from sarlang_nb.core import open_run
    rd = open_run(tmp_path/"run", "smoke", n_scenes=18, paired_fraction=0.5, test_fraction=0.5)
    syn.ensure_world(rd)
    scenes = syn.load_scenes(rd)
    assert {s["source"] for s in scenes} == {"sardet", "paired"} and {s["split"] for s in scenes} == {"train", "test"}
    vqa, caps = [], []
    for s in scenes:
        img = f"SARimages/{s['id']}.png"
        src = s["source"]
        names = sorted({o["category"] for o in s["objects"]})
        for n in names:
            k = sum(o["category"] == n for o in s["objects"])
            vqa.append(records.vqa_record(img, f"How many {n}s are in the image?", str(k), "instance counting", src, s["id"], s["split"]))
        top = max(s["landcover"], key=s["landcover"].get) if s.get("landcover") else "land"
        caps.append(records.caption_record(img, f"A SAR scene of mostly {top} with {len(s['objects'])} objects.", "concise", src, s["id"], s["split"]))
        caps.append(records.caption_record(img, f"A SAR scene. It is mostly {top}. It holds {', '.join(names) or 'no objects'}.", "complex", src, s["id"], s["split"]))
    records.write_release(rd.path, caps, vqa)
    back = records.load_release(rd.path)
    assert sorted(map(_key, back["vqa"])) == sorted(map(_key, vqa))
    assert sorted(map(_key, back["captions"])) == sorted(map(_key, caps))
    # the world's COCO files load, and their boxes match the scenes' objects
    det = C.read_sardet(rd.detection)
    n_boxes = sum(len(im["boxes"]) for im in det["images"])
    assert n_boxes == sum(len(s["objects"]) for s in scenes if s["source"] == "sardet")
    assert all((rd.detection/im["image_path"]).is_file() for im in det["images"])
    by_id = {s["id"]: s for s in scenes}
    for im in det["images"]:
        s = by_id[Path(im["file_name"]).stem]
        assert im["split"] == s["split"]
        assert sorted((b["category"], b["bbox"]) for b in im["boxes"]) == sorted((o["category"], [float(v) for v in o["bbox"]]) for o in s["objects"])


def test_predictions_round_trip(tmp_path):
    rows = [{"prompt": "p", "predict": "Yes, a ship, \"large\".", "label": "yes", "image": "SARimages/0000001.png",
             "application": "object identification", "question": "Is there a ship?"}]
    predictions.write_predictions(tmp_path/"generated_predictions.jsonl", rows)
    assert predictions.read_predictions(tmp_path/"generated_predictions.jsonl") == rows
    predictions.predictions_to_vqa_result(tmp_path/"generated_predictions.jsonl", tmp_path/"VQA_result.csv")
    import csv
    with open(tmp_path/"VQA_result.csv", newline="") as f: got = list(csv.reader(f))
    assert got == [["SARimages/0000001.png", "Yes, a ship, \"large\".", "Is there a ship?", "yes"]]   # as Evaluate_VQA.py reads it
    assert predictions.read_vqa_result(tmp_path/"VQA_result.csv")[0]["GT"] == "yes"


def test_vqa_result_blank_values_are_refused_by_row(tmp_path):
    p = tmp_path/"VQA_result.csv"
    p.write_text("a.png, yes ,Is there a ship?, yes\nb.png,no,Is there a ship?,   \n")
    with pytest.raises(SarlangError, match=r"row 2.*empty 'GT'|empty 'GT'.*row 2"): predictions.read_vqa_result(p)
    p.write_text("a.png, yes ,Is there a ship?, yes\n")
    assert predictions.read_vqa_result(p)[0]["GT"] == " yes"                       # kept as written, as the official script reads it


# --- CLI -----------------------------------------------------------------------------------------------------------

def _cli(*args):
    exe = Path(sys.executable).parent/"sarlang-convert"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli_help():
    r = _cli("--help")
    assert r.returncode == 0 and "check" in r.stdout and "predictions" in r.stdout
    for sub in ("check", "convert", "predictions", "release"):
        r = _cli(sub, "--help")
        assert r.returncode == 0 and "usage: sarlang-convert " + sub in r.stdout


def test_cli_conversions(tmp_path):
    records.write_release(tmp_path/"rel", [_cap(1), _cap(2, "test", "concise")], [_vqa(1), _vqa(2, "test", "paired")])
    r = _cli("check", tmp_path/"rel")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["files"]["Text/VQA/train/SARVQA1_train.json"]["records"] == 1
    r = _cli("convert", tmp_path/"rel/Text/caption/Caption-training.csv", tmp_path/"caps_llava.json", "--to", "llava")
    assert r.returncode == 0, r.stderr
    llava = json.loads((tmp_path/"caps_llava.json").read_text())
    assert llava[0]["conversations"][1]["value"] == _cap(1)["caption"]
    assert records.read_captions(tmp_path/"caps_llava.json", root=tmp_path/"rel") == [_cap(1)]
    r = _cli("convert", tmp_path/"rel/Text/VQA/test/SARVQA2_test.json", tmp_path/"v.csv")
    assert r.returncode == 0 and records.read_vqa(tmp_path/"v.csv", root=tmp_path/"rel") == [_vqa(2, "test", "paired")]
    r = _cli("release", tmp_path/"new", "--vqa", tmp_path/"v.csv", "--captions", tmp_path/"caps_llava.json", "--src-root", tmp_path/"rel")
    assert r.returncode == 0, r.stderr
    assert records.load_release(tmp_path/"new") == {"captions": [_cap(1)], "vqa": [_vqa(2, "test", "paired")]}
    # a release is rewritten whole: writing only VQA into it again is refused unless asked, so its captions survive
    r = _cli("release", tmp_path/"new", "--vqa", tmp_path/"v.csv", "--src-root", tmp_path/"rel")
    assert r.returncode == 1 and "--overwrite" in r.stderr
    assert records.load_release(tmp_path/"new")["captions"] == [_cap(1)]
    r = _cli("release", tmp_path/"new", "--vqa", tmp_path/"v.csv", "--src-root", tmp_path/"rel", "--overwrite")
    assert r.returncode == 0 and records.load_release(tmp_path/"new") == {"captions": [], "vqa": [_vqa(2, "test", "paired")]}
    # a bad file: exit 1, one line naming file and row
    (tmp_path/"bad.jsonl").write_text('{"image": "../x.png", "question": "q", "answer": "a"}\n')
    r = _cli("check", tmp_path/"bad.jsonl", "--kind", "vqa")
    assert r.returncode == 1 and "bad.jsonl row 1: image path '../x.png' contains '..'" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_check_real_coco():
    sd = shared_data()
    if sd is None: pytest.skip("../shared/data not found beside the checkout")
    r = _cli("check", sd/"real_sar_det/annotations_coco.json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "coco" and out["images"] == 43 and out["boxes"]["ship"] == 191 and out["boxes"]["aircraft"] == 26


def test_foreign_absolute_paths_rebase(tmp_path):
    p = tmp_path/"Text"/"VQA"/"train"/"SARVQA2_train.jsonl"; p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"images": ["/home/author/SARLANG_1M/SARimages/City_1.png"], "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(SarlangError, match="row 1: .*is absolute and not inside the dataset root.*rebase=True"):
        records.read_vqa(p)
    assert records.read_vqa(p, rebase=True)[0]["image"] == "SARimages/City_1.png"
    r = _cli("check", tmp_path, "--rebase")
    assert r.returncode == 0 and json.loads(r.stdout)["files"]["Text/VQA/train/SARVQA2_train.jsonl"]["records"] == 1
    assert _cli("check", tmp_path).returncode == 1


def test_cli_predictions_matched_to_records(tmp_path):
    vqa = [_vqa(i, "test") for i in range(4)]
    records.write_release(tmp_path, [], vqa)
    src = tmp_path/"Text/VQA/test/SARVQA1_test.json"
    gp = tmp_path/"predictions/qwen2-vl/lora/generated_predictions.jsonl"
    predictions.write_predictions(gp, [{"prompt": prompts.vqa_prompt(r["question"]), "predict": f"There are {r['answer']}.", "label": r["answer"]} for r in vqa])
    out = gp.parent/"VQA_result.csv"
    r = _cli("predictions", gp, out)   # rows lack image/question: a clear error
    assert r.returncode == 1 and "row 1: a VQA result row needs image" in r.stderr
    r = _cli("predictions", gp, out, "--records", src)
    assert r.returncode == 0, r.stderr
    got = predictions.read_vqa_result(out)
    assert [(g["image"], g["question"], g["GT"]) for g in got] == [(v["image"], v["question"], v["answer"]) for v in vqa]
    # predictions in another order than the records are refused
    rows = predictions.read_predictions(gp)
    predictions.write_predictions(gp, rows[1:] + rows[:1])
    r = _cli("predictions", gp, out, "--records", src)
    assert r.returncode == 1 and "generated_predictions.jsonl row 1: label" in r.stderr


def test_cli_check_goes_on_after_a_bad_path(tmp_path, capsys):
    "check over several paths reports each bad one and still checks the rest; exit 3 when some failed, 1 when all did."
    records.write_release(tmp_path/"rel", [_cap(1)], [_vqa(1)])
    (tmp_path/"bad.jsonl").write_text('{"image": "../x.png", "question": "q", "answer": "a"}\n')
    assert F.main(["check", str(tmp_path/"bad.jsonl"), str(tmp_path/"missing.json"), str(tmp_path/"rel")]) == 3
    out, err = capsys.readouterr()
    assert "bad.jsonl row 1" in err and "missing.json: no such file or folder" in err
    assert json.loads(out)["files"]["Text/VQA/train/SARVQA1_train.json"]["records"] == 1


# --- bad input found in review -------------------------------------------------------------------------------------

def test_text_that_is_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path/"caps.csv"
    p.write_bytes("image,caption\nSARimages/a.png,a ship\nSARimages/b.png,a harbour at Bélem\n".encode("cp1252"))
    with pytest.raises(SarlangError, match=r"caps.csv: not UTF-8 text: byte 0xe9 in line 3"): records.read_captions(p)
    j = tmp_path/"v.jsonl"
    j.write_bytes(('{"image": "SARimages/a.png", "question": "Où?", "answer": "a"}\n').encode("latin-1"))
    with pytest.raises(SarlangError, match=r"v.jsonl: not UTF-8 text: byte 0xf9 in line 1"): records.read_vqa(j)
    r = _cli("check", p)
    assert r.returncode == 1 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_headerless_csv_with_an_unquoted_comma_is_refused(tmp_path):
    p = tmp_path/"VQA_result.csv"
    p.write_text("SARimages/1.png,no,Is there a ship?,no\nSARimages/2.png,yes,Is there a ship, a car or a tank?,yes\n")
    with pytest.raises(SarlangError, match=r"row 2: expected 4 columns .*found 5 \(a field with a comma must be quoted\)"):
        predictions.read_vqa_result(p)
    c = tmp_path/"caps.csv"
    c.write_text("SARimages/a.png,Two ships, one near the harbour.\n")
    with pytest.raises(SarlangError, match="row 1: expected 2 columns"): records.read_captions(c)


def test_split_comes_from_the_folder_of_the_file_only(tmp_path):
    d = tmp_path/"test"/"experiment"; d.mkdir(parents=True)
    records.write_json_records(d/"vqa.jsonl", [{k: v for k, v in _vqa(1).items() if k != "split"}])
    assert records.read_vqa(d/"vqa.jsonl")[0].get("split") is None          # not "test" from a folder two levels up
    (tmp_path/"test"/"vqa.jsonl").write_text((d/"vqa.jsonl").read_text())
    assert records.read_vqa(tmp_path/"test"/"vqa.jsonl")[0]["split"] == "test"


def test_coco_detection_ids_and_kind(tmp_path):
    ims = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8,
            "boxes": [{"category": "ship", "bbox": [0, 0, 2, 2]}, {"id": 1, "category": "ship", "bbox": [1, 1, 2, 2]}]}]
    C.write_coco(tmp_path/"c.json", ims, {1: "ship"})
    back = C.read_coco(tmp_path/"c.json")                                 # new boxes are numbered after the given ids
    assert sorted(b["id"] for b in back["images"][0]["boxes"]) == [1, 2]
    with pytest.raises(SarlangError, match="duplicate box ids"):
        C.write_coco(tmp_path/"d.json", [{**ims[0], "boxes": [{"id": 3, "category": "ship", "bbox": [0, 0, 1, 1]}] * 2}], {1: "ship"})
    big = {"info": {"about": "x" * 100_000}, "images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []}
    (tmp_path/"train.json").write_text(json.dumps(big))                   # "annotations" beyond the first 64 KB
    assert F.detect_kind(tmp_path/"train.json") == "coco"
    (tmp_path/"bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": [], "annotations": [], "categories": []}).encode())
    assert C.read_coco(tmp_path/"bom.json")["images"] == []
    bad = {"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": [], "categories": []}
    (tmp_path/"bad.json").write_text(json.dumps(bad))
    with pytest.raises(SarlangError, match=r"images entry 0.*id must be a number or a string"): C.read_coco(tmp_path/"bad.json")


def test_nul_in_an_image_path_is_refused(tmp_path):
    for s in ("SARimages/a\x00.png", "SAR\x00images/a.png"):
        with pytest.raises(SarlangError, match="NUL"): core.safe_image_path(s, tmp_path)


def test_convert_predictions_writes_only_vqa_rows(tmp_path, cli):
    "sarlang-convert predictions: caption rows and failed rows never reach VQA_result.csv (the authors' script scores every row)."
    rows = [dict(prompt="<image>Describe the content of this image in one sentence.", predict="a ship", label="a ship at sea", image="SARimages/1.png"),
            dict(prompt="<image>Question: Is there a ship?. Answer the question concisely.", predict="yes", label="Yes", image="SARimages/1.png", question="Is there a ship?"),
            dict(prompt="<image>Question: How many cars?. Answer the question concisely.", predict="", label="3", image="SARimages/2.png", question="How many cars?", error="image not found"),
            dict(prompt="<image>Describe it.", predict="x", label="y", image="SARimages/3.png", kind="caption")]
    (tmp_path/"p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("sarlang-convert", "predictions", tmp_path/"p.jsonl", tmp_path/"VQA_result.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path/"VQA_result.csv").read_text().splitlines() == ["SARimages/1.png,yes,Is there a ship?,Yes"]


# --- issue 17: an unbalanced CSV quote; the mixing rule for LLaMA-Factory users ------------------------------------

SIX_LINES = ('a.png,yes,Is there a ship?,yes\n'
             'b.png,"yes,Is there a car?,yes\n'          # the quote opened here ...
             'c.png,no,Is there a tank?,yes\n'
             'd.png,no,Is there a bridge?,yes\n'
             'e.png,2",How many?,2\n'                    # ... closes here: lines 2-5 became one row
             'f.png,1,How many?,1\n')

def test_unbalanced_quote_does_not_swallow_rows(tmp_path):
    "Six lines used to read as three rows (the swallowed ones vanished from the score); now the file is refused at the quote."
    p = tmp_path/"VQA_result.csv"; p.write_text(SIX_LINES)
    with pytest.raises(SarlangError, match=r"VQA_result\.csv row 2: an unbalanced quote: the quoted field opened on line 2 runs on to line 5 "
                                           r"and swallows 2 line\(s\) that look like rows of their own \(first: 'c\.png,no,Is there a tank\?,yes'\)"):
        predictions.read_vqa_result(p)
    with pytest.raises(SarlangError, match="row 2: an unbalanced quote"): F.check_path(p)
    with pytest.raises(SarlangError, match="unbalanced quote"): list(core.iter_csv_rows(p, ("image", "predict", "question", "gt")))

def test_quote_left_open_at_the_end_is_refused(tmp_path):
    p = tmp_path/"VQA_result.csv"
    p.write_text('a.png,yes,Is there a ship?,yes\nb.png,no,Is there a car?,"no\n')
    with pytest.raises(SarlangError, match=r"VQA_result\.csv row 2: an unbalanced quote: the quoted field opened on line 2 is never closed"):
        predictions.read_vqa_result(p)
    p = tmp_path/"Caption_test1.csv"                   # with a header: lines count it, rows do not
    p.write_text('image,caption\nSARimages/a.png,A port.\nSARimages/b.png,"Farmland\nby a river.\n')
    with pytest.raises(SarlangError, match=r"Caption_test1\.csv row 2: .*opened on line 3 is never closed"):
        records.read_captions(p, root=tmp_path)

def test_a_caption_with_a_line_break_still_reads(tmp_path):
    p = tmp_path/"Caption_test.csv"
    p.write_text('SARimages/a.png,"A harbour, with cranes.\nShips, two of them, at the quay."\nSARimages/b.png,Farmland.\n')
    caps = records.read_captions(p, root=tmp_path)
    assert [c["caption"] for c in caps] == ["A harbour, with cranes.\nShips, two of them, at the quay.", "Farmland."]
    records.write_release(tmp_path/"rel", [_cap(1), _cap(2, "test", "concise")], [])    # _cap's captions hold a line break too
    assert len(records.load_release(tmp_path/"rel")["captions"]) == 2

def test_dataset_info_offers_the_mixed_files(tmp_path):
    "LLaMA-Factory users get SARVQA1 with the paper's class-list prefix as entries of their own; the plain files stay as published."
    pos = records.vqa_record("SARimages/0000009.png", "Where is the ship?", "Left", "object positioning", "sardet", split="train")
    vqa = [_vqa(1), pos, _vqa(2, "test"), _vqa(3, "train", "paired"), _vqa(4, "test", "paired")]
    files = records.write_release(tmp_path, [_cap(1), _cap(2, "test", "concise")], vqa)
    info = json.loads((tmp_path/"dataset_info.json").read_text())
    assert {"sarvqa1_train", "sarvqa1_train_mixed", "sarvqa1_test", "sarvqa1_test_mixed", "sarvqa2_train"} <= set(info)
    for name, ent in info.items():                    # every entry's file exists, with only keys LLaMA-Factory reads
        assert (tmp_path/ent["file_name"]).is_file(), name
        assert set(ent) <= {"file_name", "formatting", "columns", "tags"}
    user = lambda rel: [m["messages"][0]["content"] for m in json.loads((tmp_path/rel).read_text())]
    mixed, plain = user(info["sarvqa1_train_mixed"]["file_name"]), user(info["sarvqa1_train"]["file_name"])
    assert len(mixed) == len(plain) == 2
    assert mixed[0].startswith("<image>" + prompts.CLASS_PREFIX + " Question: ") and mixed[1].startswith("<image>" + prompts.POSITION_PREFIX)
    assert not any("The classes are:" in u for u in plain)
    assert all(u.startswith("<image>" + prompts.CLASS_PREFIX) for u in user(info["sarvqa1_test_mixed"]["file_name"]))
    assert files[info["sarvqa1_train_mixed"]["file_name"]] == 2
    # the mixed files sit outside Text/VQA/<split>/: nothing that globs the splits (or load_release) reads a record twice
    assert not list((tmp_path/"Text/VQA/train").glob("*mixed*"))
    assert sorted(map(_key, records.load_release(tmp_path)["vqa"])) == sorted(map(_key, vqa))
    assert records.read_vqa(tmp_path/info["sarvqa1_train_mixed"]["file_name"]) == [_vqa(1), pos]    # the raw question comes back
    assert records.llamafactory_datasets(tmp_path) == ["caption_training", "sarvqa1_train_mixed", "sarvqa2_train"]

def test_cli_release_says_which_datasets_to_use(tmp_path):
    records.write_json_records(tmp_path/"v.jsonl", [_vqa(1), _vqa(3, "train", "paired")])
    r = _cli("release", tmp_path/"rel", "--vqa", tmp_path/"v.jsonl", "--src-root", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Text/VQA/mixed/SARVQA1_train_mixed.json" in r.stdout
    assert f"--dataset_dir {tmp_path/'rel'} --dataset sarvqa1_train_mixed,sarvqa2_train" in r.stdout

def test_error_hints_name_flags_that_exist():
    "Every `sarlang-convert CMD --flag` an error message suggests is a flag of that sub-command."
    import re, inspect
    from sarlang_nb import core, records
    hints = set()
    for mod in (core, records, F):
        for cmds, flag in re.findall(r"sarlang-convert ((?:check|convert|predictions|release)(?:\|\w+)*) (--[a-z][\w-]*)", inspect.getsource(mod)):
            hints |= {(c, flag) for c in cmds.split("|")}
    assert ("release", "--rebase") in hints and ("check", "--allow-symlinks-out") in hints and ("convert", "--kind") in hints
    hints.add(("release", "--overwrite"))             # write_release: "pass --overwrite"
    for cmd, flag in sorted(hints):
        r = _cli(cmd, "--help")
        assert r.returncode == 0 and flag in r.stdout, f"sarlang-convert {cmd} has no {flag}"

def test_cli_usage_and_exit_codes(tmp_path):
    assert _cli("convert", tmp_path/"only-one.json").returncode == 2            # usage
    assert _cli("nonsense").returncode == 2
    r = _cli("check", tmp_path/"missing.json", tmp_path/"also-missing.csv")
    assert r.returncode == 1 and r.stderr.count("no such file or folder") == 2    # all failed: 1 (some failed: 3, above)
