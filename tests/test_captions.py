"""Captions by modality transfer (06_captions): resume after a kill, LLM JSON validation, HF loading, QC, stage, stats."""
import json, os, signal, subprocess, sys, textwrap, time
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

os.environ["SARLANG_PROGRESS"] = "0"
from sarlang_nb import captions as C
from sarlang_nb.core import open_run, SarlangError
from sarlang_nb.llm import LLMCache, last_user_text
from sarlang_nb.testing import ChatTestServer
from sarlang_nb.vqa import read_jsonl
from sarlang_nb.testing import tiny_blip

def _reply(req):
    t = last_user_text(req)
    if "JSON" in t:
        return json.dumps({"qa": [{"type": "land cover", "question": "What is the main land cover?", "answer": "water"},
                                  {"type": "pattern", "question": "How are the ships arranged?", "answer": "in a line"}]})
    return "Two white ships on blue water." if "one short sentence" in t else "A harbor with two ships in the left part of the image."

def _jobs(d, n):
    js = []
    for i in range(n):
        p = d/f"rgb_{i}.png"
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(p)
        js.append(C.CaptionJob(f"{i:07d}", f"SARimages/{i:07d}.png", str(p), "paired", "train"))
    return js

def _body(req): return json.dumps(req, sort_keys=True)

def test_resume_after_server_dies(tmp_path):
    "The server fails after K requests (a crash halfway); the re-run asks only what was never answered and loses nothing."
    N, K = 12, 9
    js = _jobs(tmp_path, N)
    log, cache = tmp_path/"captions_raw.jsonl", tmp_path/"llm.sqlite"
    with ChatTestServer(reply=_reply, fault=lambda n, req: "500" if n > K else None, latency=0.01) as s1:
        cap = C.OpenAICaptioner(base_url=s1.base_url, cache=cache, max_retries=0, concurrency=4, progress=False)
        r1 = C.run_captions(js, cap, log, chunk=5)
        ok1 = [_body(q) for i, q in enumerate(s1.log, 1) if i <= K]
    assert r1["written"] == K and len(r1["errors"]) == 2*N - K
    with ChatTestServer(reply=_reply, port=s1.port) as s2:    # the server back up, at the same endpoint
        cap = C.OpenAICaptioner(base_url=s2.base_url, cache=cache, max_retries=0, concurrency=4, progress=False)
        r2 = C.run_captions(js, cap, log, chunk=5)
        again = [_body(q) for q in s2.log]
    assert r2["resumed"] == K and r2["written"] == 2*N - K and r2["errors"] == []
    assert not set(again) & set(ok1)                      # no answered request is repeated
    assert len(again) == 2*N - K                          # one request per missing record
    recs = list(read_jsonl(log))
    keys = [(r["image_id"], r["style"]) for r in recs]
    assert len(recs) == 2*N and len(set(keys)) == 2*N     # no record lost, none twice
    assert {r["prompt_hash"] for r in recs} == {C.prompt_hash(C.CAPTION_PROMPTS[s]) for s in C.STYLES}
    assert all(r["image"].startswith("SARimages/") and r["rgb_image"].endswith(".png") for r in recs)

KILL_SCRIPT = textwrap.dedent("""
    import sys, os
    os.environ["SARLANG_PROGRESS"] = "0"
    from pathlib import Path
    from sarlang_nb import captions as C
    d, url = Path(sys.argv[1]), sys.argv[2]
    js = [C.CaptionJob(f"{i:07d}", f"SARimages/{i:07d}.png", str(d/f"rgb_{i}.png"), "paired", "train") for i in range(int(sys.argv[3]))]
    cap = C.OpenAICaptioner(base_url=url, cache=d/"llm.sqlite", max_retries=0, concurrency=2, progress=False)
    C.run_captions(js, cap, d/"captions_raw.jsonl", chunk=2)
""")

def test_resume_after_sigkill(tmp_path):
    "A caption process killed with SIGKILL halfway; the re-run repeats no request whose reply was stored and loses no record."
    N = 16
    js = _jobs(tmp_path, N)
    log = tmp_path/"captions_raw.jsonl"
    (tmp_path/"kill.py").write_text(KILL_SCRIPT)
    with ChatTestServer(reply=_reply, latency=0.1) as s1:
        p = subprocess.Popen([sys.executable, str(tmp_path/"kill.py"), str(tmp_path), s1.base_url, str(N)])
        t0 = time.time()
        while time.time() - t0 < 60 and p.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 6: break
            time.sleep(0.02)
        assert p.poll() is None, "the caption process ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL); p.wait()
    n_before = len(list(read_jsonl(log))) if log.exists() else 0
    assert 0 < n_before < 2*N
    cache = LLMCache(tmp_path/"llm.sqlite")
    stored = {k for (k,) in cache._db.execute("SELECT key FROM replies")}; cache.close()
    from sarlang_nb.llm import request_key, normalize_request
    with ChatTestServer(reply=_reply, port=s1.port) as s2:    # the same endpoint: its cached replies count
        cap = C.OpenAICaptioner(base_url=s2.base_url, cache=tmp_path/"llm.sqlite", max_retries=0, progress=False)
        r2 = C.run_captions(js, cap, log)
        sent = [request_key(q["model"], normalize_request({k: v for k, v in q.items() if k != "model"}), s2.base_url) for q in s2.log]
    assert not set(sent) & stored                         # nothing whose reply was stored is asked again
    assert r2["errors"] == [] and r2["resumed"] == n_before
    recs = list(read_jsonl(log))
    assert len(recs) == 2*N and len({(r["image_id"], r["style"]) for r in recs}) == 2*N

def test_inquiries_bad_json_reported_not_fatal(tmp_path):
    js = _jobs(tmp_path, 5)
    from sarlang_nb.llm import image_part
    bad_url = image_part(tmp_path/"rgb_3.png", detail="low")["image_url"]["url"]
    def reply(req):
        if req["messages"][0]["content"][0]["image_url"]["url"] == bad_url: return "Sure! Here are some questions: 1. ..."
        return _reply(req)
    with ChatTestServer(reply=reply) as srv:
        cap = C.OpenAICaptioner(base_url=srv.base_url, max_retries=0, invalid_retries=2, progress=False)
        r = C.run_inquiries(js, C.OpenAIInquirer(cap), tmp_path/"inq.jsonl")
        assert srv.requests == 4 + 3                       # the bad one was asked 1 + 2 times
    assert r["written"] == 8 and [i for i, _ in r["errors"]] == ["0000003"] and "not JSON" in r["errors"][0][1]
    recs = list(read_jsonl(tmp_path/"inq.jsonl"))
    assert {r["application"] for r in recs} == {"others"} and {r["qtype"] for r in recs} == {"land cover", "pattern"}

def test_parse_inquiries():
    ok = C.parse_inquiries('Here: ```json\n[{"type": "direction", "question": "Which way?", "answer": "north"}]\n```')
    assert ok == [{"type": "direction", "question": "Which way?", "answer": "north"}]
    for bad in ["", "{", '{"qa": []}', '{"qa": [{"type": "colour", "question": "q", "answer": "red"}]}', '"text"']:
        with pytest.raises(ValueError): C.parse_inquiries(bad)

def test_hf_captioner_from_local_folder(tmp_path):
    js = _jobs(tmp_path, 3)
    hf = C.HFCaptioner(tiny_blip(tmp_path/"blip"), batch_size=2, min_new_tokens=3, max_new_tokens=6)
    out = hf.caption(js + [C.CaptionJob("x", "SARimages/x.png", str(tmp_path/"nope.png"))], "concise")
    assert all(isinstance(t, str) and t and e is None for t, e in out[:3]) and out[3][0] is None and "nope.png" in out[3][1]
    r = C.run_captions(js, hf, tmp_path/"c.jsonl", styles=["concise"])
    assert r["written"] == 3 and {x["captioner"] for x in read_jsonl(tmp_path/"c.jsonl")} == {"hf:blip"}
    with pytest.raises(SarlangError, match="config.json"): C.HFCaptioner(tmp_path)
    # as the stage's captioner: concise captions of the paired scenes' optical images
    rd = open_run(tmp_path/"run", "smoke", n_scenes=12, scene_size=128, paired_fraction=0.5)
    C.run_captions_stage(rd, "smoke", captioner=f"hf:{tmp_path/'blip'}")
    raw = list(read_jsonl(rd.path/"Text"/"records"/"captions_raw.jsonl"))
    assert raw and {r["style"] for r in raw} == {"concise"} and {r["captioner"] for r in raw} == {"hf:blip"}
    assert len(raw) == len(C.stage_jobs(rd, "smoke"))

def test_qc_kinds_and_report():
    recs = [
        {"image_id": "1", "style": "concise", "caption": "Three white ships on dark blue water."},        # colour -> removed
        {"image_id": "1", "style": "concise", "caption": "Three white ships on dark blue water."},        # duplicate
        {"image_id": "1", "style": "complex", "caption": "Two ships are moored at the quay next to a large harbor in the port."},  # quantity (3 ships)
        {"image_id": "2", "style": "concise", "caption": "Various objects are scattered on the ground."},  # vague
        {"image_id": "2", "style": "concise", "caption": "Farmland."},                                      # length
        {"image_id": "2", "style": "complex", "caption": "The fields appear bright green."},                # colour predicate -> empty -> dropped
        {"image_id": "3", "style": "concise", "caption": "Two ships near a harbor. Two ships near a harbor."},  # repeat (no boxes: count unchecked)
    ]
    counts = {"1": {"ship": 3, "harbor": 1}, "2": {}}
    kept, rep = C.quality_control(recs, counts)
    assert rep.kinds == Counter(colour=2, duplicate=1, quantity=1, vague=1, length=1, repeat=1)
    assert [r["caption"] for r in kept] == ["Three ships on water.", "Two ships near a harbor."]
    assert kept[0]["qc"] == ["colour_removed"] and kept[1]["qc"] == ["repeat_removed"]
    assert rep.n_in == 7 and rep.n_out == 2 and rep.actions["dropped"] == 5
    kept, rep = C.quality_control(recs, counts, C.QCConfig(colour="drop", quantity="fix", vague="keep"))
    caps = [r["caption"] for r in kept]
    assert "Three ships are moored at the quay next to a large harbor in the port." in caps
    assert "Various objects are scattered on the ground." in caps and not any("white" in c for c in caps)
    d = rep.as_dict(); json.dumps(d)
    assert set(d["examples"]) >= {"colour", "quantity"}

def test_qc_counts_not_fooled():
    cfg = C.QCConfig()
    assert C.qc_caption("One of the ships is larger than the others near the harbor.", "complex", {"ship": 4, "harbor": 1}, cfg)[0]
    assert C.qc_caption("A port with 2 harbors and three tanks nearby.", "complex", {"harbor": 2, "tank": 3}, cfg)[0]
    assert C.qc_caption("A port with 2 harbors and three tanks nearby.", "complex", {"harbor": 2, "tank": 4}, cfg)[0] is None
    assert C.remove_colours("A tank farm with eight tanks.") == ("A tank farm with eight tanks.", 0)   # 'tan' is not in 'tank'

def test_stage_on_synthetic_world(tmp_path):
    from sarlang_nb.vqa import run_vqa_stage
    rd = open_run(tmp_path/"run", "smoke", n_scenes=24, scene_size=128, paired_fraction=0.5)
    run_vqa_stage(rd)
    rep = C.run_captions_stage(rd, "smoke")
    caps = list(read_jsonl(rd.path/"Text"/"records"/"captions.jsonl"))
    inq = list(read_jsonl(rd.path/"Text"/"records"/"inquiries.jsonl"))
    from sarlang_nb.synthetic import load_scenes
    paired = {s["id"]: s for s in load_scenes(rd) if s["source"] == "paired"}
    assert caps and {r["image_id"] for r in caps} <= set(paired) and {r["style"] for r in caps} == set(C.STYLES)
    for r in caps:
        assert r["image"] == f"SARimages/{r['image_id']}.png" and r["rgb_image"] == f"RGBimages/{r['image_id']}.png"
        assert r["split"] == paired[r["image_id"]]["split"] and r["captioner"] == "offline-metadata-v1" and r["prompt_hash"]
        assert not C._COLOUR_RUN.search(r["caption"])
        n = Counter(o["category"] for o in paired[r["image_id"]]["objects"])
        for cat, k, _ in C._counts_in(r["caption"], C.QCConfig().categories): assert n[cat] == k
    assert inq and {r["application"] for r in inq} == {"others"}
    assert rd.stage_complete("06_captions") and (rd.tables/"qc_report.json").exists()
    st = json.loads((rd.tables/"text_stats.json").read_text())
    vqa = list(read_jsonl(rd.path/"Text"/"records"/"vqa.jsonl"))
    assert st["total"] == len(caps) + len(inq) + len(vqa) and st["applications"]["image description"] == len(caps)
    assert (rd.figures/"fig4_text_statistics.png").stat().st_size > 1000
    # a re-run resumes: nothing new is generated, the outputs are the same
    before = (rd.path/"Text"/"records"/"captions.jsonl").read_bytes()
    C.run_captions_stage(rd, "smoke")
    assert (rd.path/"Text"/"records"/"captions.jsonl").read_bytes() == before

def test_stage_with_openai_captioner(tmp_path):
    rd = open_run(tmp_path/"run", "smoke", n_scenes=12, scene_size=128, paired_fraction=0.5)
    with ChatTestServer(reply=_reply) as srv:
        rep = C.run_captions_stage(rd, "smoke", captioner="openai", base_url=srv.base_url)
        n = srv.requests
    caps = list(read_jsonl(rd.path/"Text"/"records"/"captions.jsonl"))
    assert n > 0 and caps and all(r["captioner"] == "openai:gpt-4o" for r in caps)
    assert all(r["caption"] in ("Two ships on water.", "A harbor with two ships in the left part of the image.") or r.get("qc") for r in caps)
    assert rep["captions"]["kinds"].get("colour", 0) > 0 or rep["captions"]["kinds"].get("quantity", 0) > 0

def test_bad_inputs(tmp_path):
    with pytest.raises(SarlangError, match="unknown captioner"): C.make_captioner("gpt")
    (tmp_path/"log.jsonl").write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(SarlangError, match="row 2"): C._load_log(tmp_path/"log.jsonl")
    (tmp_path/"t.jsonl").write_text('{"a": 1}\n{"b": 2')
    assert C._load_log(tmp_path/"t.jsonl") == [{"a": 1}] and (tmp_path/"t.jsonl").read_text() == '{"a": 1}\n'
    (tmp_path/"u.jsonl").write_text('{"a": 1}\n{"b": 2}')
    assert C._load_log(tmp_path/"u.jsonl") == [{"a": 1}, {"b": 2}] and (tmp_path/"u.jsonl").read_text().endswith("}\n")
    with pytest.raises(SarlangError, match="image file not found"):
        C.OpenAICaptioner(base_url="http://127.0.0.1:9/v1")._request(C.CaptionJob("1", "S/1.png", str(tmp_path/"no.png")), "concise")


def test_qc_duplicates_made_by_qc_are_dropped():
    "Two captions of one image and style that differ only in what QC removes are one caption after QC, kept once."
    recs = [{"image_id": "1", "style": "concise", "caption": "Three ships on blue water near a harbor."},
            {"image_id": "1", "style": "concise", "caption": "Three ships on green water near a harbor."},
            {"image_id": "1", "style": "complex", "caption": "Three ships on water near a harbor, seen from above."},
            {"image_id": "2", "style": "concise", "caption": "Three ships on grey water near a harbor."}]
    kept, rep = C.quality_control(recs)
    assert [(r["image_id"], r["style"], r["caption"]) for r in kept] == [
        ("1", "concise", "Three ships on water near a harbor."), ("1", "complex", "Three ships on water near a harbor, seen from above."),
        ("2", "concise", "Three ships on water near a harbor.")]
    assert rep.kinds["duplicate"] == 1 and rep.actions["dropped"] == 1

def test_job_without_rgb_is_a_job_error(tmp_path):
    "A job with no optical image (rgb=None) is reported for that job; the rest of the batch is captioned."
    js = _jobs(tmp_path, 2) + [C.CaptionJob("0000009", "SARimages/0000009.png")]
    with ChatTestServer(reply=_reply) as srv:
        cap = C.OpenAICaptioner(base_url=srv.base_url, cache=tmp_path/"c.sqlite", progress=False)
        r = C.run_captions(js, cap, tmp_path/"log.jsonl", styles=("concise",))
        assert r["written"] == 2 and r["errors"] == [("0000009", "concise", "job 0000009 has no optical image (rgb)")]
        ri = C.run_inquiries(js, C.OpenAIInquirer(cap), tmp_path/"inq.jsonl")
        assert ri["written"] == 4 and ri["errors"] == [("0000009", "job 0000009 has no optical image (rgb)")]
    hf = C.HFCaptioner(tiny_blip(tmp_path/"blip"), max_new_tokens=3)
    out = hf.caption(js, "concise")
    assert out[2] == (None, "job 0000009 has no optical image (rgb)") and all(t for t, _ in out[:2])

def test_qc_measurements_and_modifiers_are_not_counts():
    "'A 300 m long bridge' is one bridge, not 300; 'four lane' and 'two-storey' are modifiers, not counts."
    ok = ["A 300 m long bridge crosses the river between two urban areas.", "A 300m long bridge crosses the river near the port.",
          "A four lane bridge spans the river near the port area.", "A four-lane bridge spans the river near the port area.",
          "A 2 km bridge and a two-storey harbor building by the water.", "A bridge covers 30 % of the image near one harbor."]
    for t in ok:
        assert C.qc_caption(t, "complex", {"bridge": 1, "harbor": 1}) == (t, [], []), t
        assert [(c, n) for c, n, _ in C._counts_in(t, C.QCConfig().categories)] in ([], [("harbor", 1)]), t
    assert C.qc_caption("A 300 m long bridge and three ships near the port.", "complex", {"bridge": 1, "ship": 2})[0] is None   # still counted

def test_qc_fix_never_writes_wrong_grammatical_number():
    "Fix mode replaces a number only when singular/plural stays the same; otherwise the caption is dropped as a quantity failure."
    cfg = C.QCConfig(quantity="fix")
    for t, counts in [("A single ship is docked at the pier in the harbor area near the coast.", {"ship": 3, "harbor": 1}),
                      ("Three ships are docked at the pier next to a harbor on the coast.", {"ship": 1, "harbor": 1}),
                      ("One ship is docked at the pier next to a harbor on the coast.", {"ship": 2, "harbor": 1})]:
        assert C.qc_caption(t, "complex", counts, cfg) == (None, ["quantity"], []), t
    assert C.qc_caption("Three ships are docked at the pier next to a harbor.", "complex", {"ship": 5, "harbor": 1}, cfg)[0] == \
        "Five ships are docked at the pier next to a harbor."
    assert C.qc_caption("A dozen ships are docked at the pier next to a harbor.", "complex", {"ship": 4, "harbor": 1}, cfg)[0] == \
        "Four ships are docked at the pier next to a harbor."
    t = "A 300 m long bridge crosses the river between two urban areas."
    assert C.qc_caption(t, "complex", {"bridge": 1}, cfg) == (t, [], [])


def test_hf_captioner_refuses_a_decompression_bomb_per_job(tmp_path, monkeypatch):
    "An optical image over the pixel limit was decoded by PIL (or crashed the batch); now it is that job's error, the others are captioned."
    monkeypatch.setenv("SARLANG_MAX_PIXELS", "50000")
    for i in range(2): Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path/f"{i}.png")
    Image.new("RGB", (300, 300)).save(tmp_path/"huge.png")
    hf = C.HFCaptioner(tiny_blip(tmp_path/"blip"), max_new_tokens=3)
    jobs = [C.CaptionJob(str(i), f"SARimages/{i}.png", str(tmp_path/f"{i}.png")) for i in range(2)] + [C.CaptionJob("9", "SARimages/9.png", str(tmp_path/"huge.png"))]
    res = hf.caption(jobs, "concise")
    assert all(t and e is None for t, e in res[:2])
    assert res[2][0] is None and "cannot read optical image" in res[2][1] and "huge.png" in res[2][1]


def test_stage_fails_when_no_caption_is_made_and_table4_names_failures(tmp_path):
    "Issue 17 (a stage whose work failed must fail): every captioning call answered 401 -> no manifest, a clear error."
    rd = open_run(tmp_path/"run", "smoke", n_scenes=8, scene_size=128, paired_fraction=0.5)
    with ChatTestServer(reply=_reply, fault=lambda n, req: "401") as srv:
        with pytest.raises(SarlangError, match=r"no caption was made for any of the \d+ image\(s\)"):
            C.run_captions_stage(rd, "smoke", captioner="openai", base_url=srv.base_url)
    assert not rd.stage_complete("06_captions")
    assert "not counted:" in (rd.tables/"table4_applications.md").read_text()
