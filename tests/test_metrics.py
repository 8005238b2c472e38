"Tests of sarlang_nb.metrics: caption metrics, VQA accuracy with the authors' judge, the two console commands."
import os, sys, csv, json, time, random, shutil, subprocess, contextlib, io
from pathlib import Path
import pytest
from sarlang_nb.core import shared_data, RunDir, read_json
from sarlang_nb.llm import LLMCache
from sarlang_nb.testing import ChatTestServer
from sarlang_nb import metrics as M

os.environ["SARLANG_PROGRESS"] = "0"
JAVA = shutil.which("java") is not None
WORDS = "ship ships harbor harbour sea water aircraft airport tank tanks car cars bridge river field building road the a of in on near two three several large small dark bright".split()

def run_cli(main, args):
    "Run a console main(); returns (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()

def sentence(rng, n=None):
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 12)))

# ---------------------------------------------------------------- captions
def test_coco_caption_demo_reproduced(tmp_path):
    data = shared_data()
    if data is None: pytest.skip("../shared/data not found beside the checkout")
    if not JAVA: pytest.skip("java not found: the PTBTokenizer needs it")
    demo = data/"coco_caption_example"
    exp = read_json(demo/"expected_scores.json")["notebook_3dp"]
    code, out, err = run_cli(M.captions_main, [demo/"captions_val2014_fakecap_results.json", "--refs", demo/"captions_val2014_fakecap_subset_refs.json",
                                               "--tokenize", "coco", "--meteor", "--json", tmp_path/"m.json", "--per-sample", tmp_path/"per.csv"])
    assert code == 0, err
    s = json.loads(out)
    assert s == read_json(tmp_path/"m.json")
    assert (s["tokenize"], s["n"]) == ("coco", 1000)
    for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert abs(s[k] - exp[k]) <= 1e-3, (k, s[k], exp[k])
    per = list(csv.DictReader(open(tmp_path/"per.csv")))
    assert len(per) == 1000
    assert abs(sum(float(r["CIDEr"]) for r in per)/1000 - s["CIDEr"]) < 1e-6   # CIDEr is the mean of the per-image scores

def authors_evaluate_caption(path):
    "A straight re-implementation of the authors' Evaluate_caption.py: one raw reference per line, no tokenizer."
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.cider.cider import Cider
    references, hypothesis, j = {}, {}, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            j += 1
            d = json.loads(line.strip())
            references[j - 1] = [d["label"]]; hypothesis[j - 1] = [d["predict"]]
    b, _ = Bleu(4).compute_score(references, hypothesis, verbose=0)
    r, _ = Rouge().compute_score(references, hypothesis)
    c, _ = Cider().compute_score(references, hypothesis)
    return {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3], "ROUGE_L": r, "CIDEr": c}

def test_official_captions_equal_authors_script(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(300):
        ref = sentence(rng).capitalize() + rng.choice([".", "", " ."])
        words = ref.split(); rng.shuffle(words)
        pred = ref if i % 7 == 0 else " ".join(words[: rng.randint(1, len(words))])
        rows.append({"prompt": "<image>Describe the content of this image in one sentence.", "predict": pred, "label": ref})
    f = tmp_path/"Caption_result.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(M.captions_main, [f])
    assert code == 0, err
    ours, theirs = json.loads(out), authors_evaluate_caption(f)
    assert ours["tokenize"] == "official" and ours["n"] == 300
    for k, v in theirs.items(): assert ours[k] == pytest.approx(v, abs=1e-12), k
    if JAVA:   # the COCO convention gives different numbers on the same file, and says so
        c = json.loads(run_cli(M.captions_main, [f, "--tokenize", "coco"])[1])
        assert c["tokenize"] == "coco" and c["Bleu_4"] != ours["Bleu_4"]

def test_caption_refs_from_release_file(tmp_path):
    (tmp_path/"Caption_test.csv").write_text("image,caption\nSARimages/0000001.png,a ship in the sea\nSARimages/0000001.png,one ship at sea\n"
                                             "SARimages/0000002.png,an airport with two aircraft\n")
    (tmp_path/"p.jsonl").write_text('{"predict": "one ship at sea", "label": "x", "image": "SARimages/0000001.png"}\n'
                                    '{"predict": "an airport", "label": "x", "image": "SARimages/0000002.png"}\n')
    items = M.read_caption_items(tmp_path/"p.jsonl", tmp_path/"Caption_test.csv")
    assert [len(i["refs"]) for i in items] == [2, 1]
    s, per = M.caption_scores(items)
    assert per[0]["Bleu_1"] == pytest.approx(1.0)   # matches its second reference exactly
    # the same rows against COCO references keyed by number: matched by the image's file stem
    (tmp_path/"refs.json").write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 1, "caption": "a ship in the sea"}, {"image_id": 2, "caption": "an airport with two aircraft"}]}))
    items = M.read_caption_items(tmp_path/"p.jsonl", tmp_path/"refs.json")
    assert [(i["id"], i["refs"]) for i in items] == [(1, ["a ship in the sea"]), (2, ["an airport with two aircraft"])]

@pytest.mark.parametrize("content,refs,msg", [
    ('{"predict": "a", "label": "b"}\n{"predict": "  ", "label": "b"}\n', None, "row 2: empty 'predict'"),
    ('{"predict": "a", "label": "b"}\n{"label": "b"}\n', None, "row 2: missing 'predict'"),
    ('{"predict": ["a"], "label": "b"}\n', None, "row 1: 'predict' must be a string"),
    ('{"predict": "a", "label": null}\n', None, "row 1: missing 'label'"),
    ('{"predict": "a", "label": "b"}\n{"oops": 1}\n', None, "row 2: a caption prediction needs"),
    ('[{"image_id": 1, "caption": "a dog"}, {"image_id": 5, "caption": "x"}]', "coco", "row 2: image 5 has no reference"),
    ('[{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "x"}]', "coco", "row 2: image 1 is predicted twice (first at row 1)"),
    ('[{"image_id": 1, "caption": 3}]', "coco", "row 1: 'caption' must be a string"),
    ('', None, "no predictions"),
])
def test_caption_bad_input_names_the_row(tmp_path, content, refs, msg):
    f = tmp_path/("pred.jsonl" if content.startswith("{") or not content else "pred.json")
    f.write_text(content)
    args = [f]
    if refs:
        (tmp_path/"refs.json").write_text('{"images": [], "annotations": [{"image_id": 1, "caption": "a dog"}]}')
        args += ["--refs", tmp_path/"refs.json"]
    code, out, err = run_cli(M.captions_main, args)
    assert code == 1 and msg in err and "pred.json" in err, err
    assert out == ""

def test_caption_allow_empty(tmp_path):
    f = tmp_path/"p.jsonl"; f.write_text('{"predict": "", "label": "a ship"}\n{"predict": "a ship", "label": "a ship"}\n')
    code, out, err = run_cli(M.captions_main, [f, "--allow-empty"])
    assert code == 0 and json.loads(out)["empty_predictions"] == 1

# ---------------------------------------------------------------- VQA
def make_vqa_rows(rng, n):
    "Rows of every kind the authors' order distinguishes (containment, yes/no, 0-99, judge), with mixed case and spaces."
    out = []
    for i in range(n):
        k = i % 6
        if k == 0: q, gt, p = "Is there a ship in the image?", rng.choice(["Yes", "no"]), rng.choice(["yes", "No", "There is no ship", "YES, one"])
        elif k == 1: q, gt, p = "How many tanks are there?", str(rng.randint(0, 12)), rng.choice(["3", "three", " 4 ", "12 tanks"])
        elif k == 2: q, gt, p = "What is the main land cover?", rng.choice(["Playground", "pond", "building"]), rng.choice(["ground track field", "swimming pool", "rooftop", "Playground area"])
        elif k == 3: q, gt, p = "Where is the aircraft?", rng.choice(["top left", "center"]), rng.choice(["upper left", "in the center", "bottom"])
        elif k == 4: q, gt, p = "What is the object in the top region?", rng.choice(["harbor", "bridge"]), rng.choice(["Harbour", "a bridge", "ship", ""])
        else: q, gt, p = "How many ships?", "150", rng.choice(["150", "about 150", "many"])
        out.append((f"SARimages/{i:07d}.png", p, q, gt))
    return out

def judge_reply(req):
    "A deterministic stand-in judge: 1 when prediction and ground truth share their first letter (with stray whitespace)."
    t = req["messages"][0]["content"][0]["text"]
    gt = t.split("Ground Truth Answer: ")[1].split("\n")[0]; pred = t.split("Predicted Answer: ")[1].split("\n")[0]
    return (" 1\n" if gt[:1] == pred[:1] else "0") if len(t) % 3 else ("1" if gt[:1] == pred[:1] else "0\n")

def authors_evaluate_vqa(csv_path, base_url):
    "A straight re-implementation of the authors' Evaluate_VQA.py: loop the rows, lower-case and strip, containment, "
    "yes/no/0-99 exact, else ask gpt-4o-mini (here: the local server) and int() the reply."
    from openai import OpenAI
    client = OpenAI(base_url=base_url, api_key="no-key", max_retries=0, timeout=30)
    prompt = ("Question: {q}\nGround Truth Answer: {gt}\nPredicted Answer: {pred}\nDoes the predicted answer match the ground truth? "
              "Answer 1 for match and 0 for not match. Use semantic meaning not exact match. Synonyms are also treated as a match, "
              "e.g., football and soccer, playground and ground track field, building and rooftop, pond and swimming pool. "
              "Do not explain the reason.\n")
    correct, total, per = 0, 0, []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            question, gt, pred = row[2].lower().strip(), row[3].lower().strip(), row[1].lower().strip()
            if gt in pred: m = 1
            elif gt in ["yes", "no"] + list(map(str, range(100))): m = 1 if gt == pred else 0
            else:
                r = client.chat.completions.create(model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": [
                    {"type": "text", "text": prompt.format(q=question, gt=gt, pred=pred)}]}])
                m = int(r.choices[0].message.content)
            per.append(m); correct += m; total += 1
    return correct/total, per

def write_vqa_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f: csv.writer(f).writerows(rows)

def test_official_vqa_equals_authors_script_and_rerun_is_free(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", make_vqa_rows(random.Random(1), 240))
    with ChatTestServer(reply=judge_reply) as srv:
        acc, per_theirs = authors_evaluate_vqa(tmp_path/"VQA_result.csv", srv.base_url)
        theirs_prompts = sorted(r["messages"][0]["content"][0]["text"] for r in srv.log)
        theirs_bodies = {json.dumps(r, sort_keys=True) for r in srv.log}
        srv.reset()
        args = [tmp_path/"VQA_result.csv", "--judge", "official", "--base-url", srv.base_url, "--cache", tmp_path/"judge.sqlite",
                "--json", tmp_path/"r.json", "--per-sample", tmp_path/"per.csv", "--concurrency", 16]
        code, out, err = run_cli(M.vqa_main, args)
        assert code == 0, err
        rep = json.loads(out)
        assert rep["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert [int(r["correct"]) for r in csv.DictReader(open(tmp_path/"per.csv"))] == per_theirs
        ours_prompts = sorted(r["messages"][0]["content"][0]["text"] for r in srv.log)
        assert set(ours_prompts) == set(theirs_prompts)          # the same (verbatim) prompts, lower-cased as theirs
        assert {json.dumps(r, sort_keys=True) for r in srv.log} == theirs_bodies   # the same request bodies
        assert len(ours_prompts) == len(set(theirs_prompts))     # identical questions asked once
        assert rep["judged_by_rules"] + rep["judged_by_llm"] == rep["n"] == 240 and rep["llm_calls"] >= srv.requests
        assert rep["judged_by_llm"] > 0 and rep["invalid"] == 0
        assert sum(g["n"] for g in rep["per_group"].values()) == 240 and "instance counting" in rep["per_group"]
        assert "overall" in err and "accuracy" in err             # the table
        n = srv.requests
        code, out, err = run_cli(M.vqa_main, args)                 # second run: zero requests
        assert code == 0 and srv.requests == n
        rep2 = json.loads(out)
        assert rep2["llm_calls"] == 0 and rep2["cache_hits"] == len(set(ours_prompts)) and rep2["accuracy"] == rep["accuracy"]

def test_rules_judge_is_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False); monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    write_vqa_csv(tmp_path/"VQA_result.csv", make_vqa_rows(random.Random(2), 60))
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules", "--by", "none"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["unjudged"] > 0 and rep["llm_calls"] == 0 and rep["judged_by_rules"] + rep["unjudged"] == 60 and "per_group" not in rep
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "official", "--no-cache"])
    assert code == 1 and "OPENAI_API_KEY" in err    # OpenAI without a key: a clear error, not a crash

def test_junk_and_faults_never_crash(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", make_vqa_rows(random.Random(3), 120))
    junk = ["maybe", "1 or 0", "", "Answer 1 for match and 0 for not match", "10", "**1**", "Yes.", "0."]
    def reply(req):
        h = sum(map(ord, req["messages"][0]["content"][0]["text"]))
        return junk[h % len(junk)]
    with ChatTestServer(reply=reply, p429=0.15, p500=0.15, pjunk=0.1, seed=4) as srv:
        code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", srv.base_url, "--cache", tmp_path/"c.sqlite",
                                              "--per-sample", tmp_path/"per.csv", "--max-retries", 30, "--backoff", 0.005, "--quiet"])
        assert code == 3 and "no clear 0 or 1" in err, err          # invalid replies: a partial failure, said so
        rep = json.loads(out)
        assert srv.outcomes["429"] and srv.outcomes["500"] and srv.outcomes["junk"]
        assert rep["invalid"] > 0 and rep["judged_by_llm"] > 0 and rep["llm_errors"] == 0
        per = list(csv.DictReader(open(tmp_path/"per.csv")))
        assert {r["how"] for r in per if r["how"] not in ("contains", "exact")} == {"llm", "invalid"}
        assert all(r["correct"] == "0" for r in per if r["how"] == "invalid")
        n = srv.requests
        code, out, _ = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", srv.base_url, "--cache", tmp_path/"c.sqlite", "--quiet",
                                            "--max-retries", 30, "--backoff", 0.005])
        assert code == 3 and json.loads(out)["invalid"] == rep["invalid"]
        prompt = lambda req: req["messages"][0]["content"][0]["text"]
        def invalid(req):
            try: M.parse_judge(reply(req)); return False
            except ValueError: return True
        asked = {prompt(r) for r in srv.log[n:]}
        assert asked and asked == {prompt(r) for r in srv.log[:n] if invalid(r)}   # invalid replies are not cached: only they are asked again

def test_judge_down_then_resumed(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", make_vqa_rows(random.Random(5), 60))
    args = [tmp_path/"VQA_result.csv", "--cache", tmp_path/"c.sqlite", "--json", tmp_path/"r.json", "--quiet", "--backoff", 0.005]
    with ChatTestServer(reply=judge_reply, fault=lambda n, req: "500" if n % 2 == 0 else None) as srv:
        port = srv.port
        code, out, err = run_cli(M.vqa_main, [*args, "--base-url", srv.base_url, "--max-retries", 0])
        assert code == 3 and "re-run" in err
        rep = read_json(tmp_path/"r.json")
        assert rep["llm_errors"] > 0 and rep["judged_by_llm"] > 0
    cache = LLMCache(tmp_path/"c.sqlite")
    cached = {json.loads(q)["messages"][0]["content"][0]["text"] for (q,) in cache._db.execute("SELECT request FROM replies")}
    assert cached
    with ChatTestServer(reply=judge_reply, port=port) as srv:   # the judge back up, at the same endpoint
        code, out, err = run_cli(M.vqa_main, [*args, "--base-url", srv.base_url])
        assert code == 0 and json.loads(out)["llm_errors"] == 0
        asked = {r["messages"][0]["content"][0]["text"] for r in srv.log}
        assert asked and not asked & cached and len(cache) == len(cached) + srv.requests   # only the failed ones asked again

def test_killed_run_resumes_and_key_never_written(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", make_vqa_rows(random.Random(6), 300))
    db, secret = tmp_path/"c.sqlite", "sk-test-DO-NOT-WRITE-0123456789abcdef"
    env = {**os.environ, "OPENAI_API_KEY": secret, "SARLANG_PROGRESS": "0"}
    with ChatTestServer(reply=judge_reply, latency=0.05) as srv:
        cmd = [sys.executable, "-c", "import sys; from sarlang_nb.metrics import vqa_main; sys.exit(vqa_main(sys.argv[1:]))",
               str(tmp_path/"VQA_result.csv"), "--base-url", srv.base_url, "--cache", str(db), "--concurrency", "2", "--quiet"]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t0 = time.time()
            while not (db.exists() and len(LLMCache(db)) >= 8):
                assert time.time() - t0 < 90 and p.poll() is None
                time.sleep(0.02)
        finally: p.kill(); p.wait()
        cache = LLMCache(db)
        cached = {json.loads(q)["messages"][0]["content"][0]["text"] for (q,) in cache._db.execute("SELECT request FROM replies")}
        assert len(cached) >= 8
        srv.reset()
        r = subprocess.run([*cmd[:-2], "8", "--quiet", "--json", str(tmp_path/"r.json"), "--per-sample", str(tmp_path/"per.csv")],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rep = read_json(tmp_path/"r.json")
        asked = [r["messages"][0]["content"][0]["text"] for r in srv.log]
        assert not set(asked) & cached                                    # nothing answered before the kill was asked again
        assert len(asked) == len(set(asked)) and rep["llm_calls"] == len(asked)
        assert rep["cache_hits"] == len(cached) and len(cache) == len(cached) + len(asked)
        assert rep["llm_errors"] == 0 and rep["judged_by_rules"] + rep["judged_by_llm"] == 300
    blobs = [f.read_bytes() for f in tmp_path.iterdir() if f.is_file()]
    assert not any(secret.encode() in b for b in blobs)

def test_llama_factory_predictions_and_by_application(tmp_path):
    tpl = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Question: {q}. Answer the question concisely.<|im_end|>\n<|im_start|>assistant\n"
    rows = [{"prompt": tpl.format(q="How many ships are there in the image?"), "predict": "3", "label": "3"},
            {"prompt": tpl.format(q="Is there a car in the image?"), "predict": "Yes.", "label": "no"},
            {"prompt": tpl.format(q="Where is the bridge located?"), "predict": "center", "label": "center", "application": "object positioning"}]
    (tmp_path/"generated_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = M.read_vqa_rows(tmp_path/"generated_predictions.jsonl")
    assert [g["question"] for g in got] == ["How many ships are there in the image?", "Is there a car in the image?", "Where is the bridge located?"]
    rep, per = M.evaluate_vqa(got, "rules")
    assert rep["per_group"]["instance counting"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert rep["per_group"]["object identification"]["correct"] == 0      # "yes." != "no"
    assert rep["application_guessed"] == 2 and abs(rep["accuracy"] - 2/3) < 1e-12

def test_vqa_bad_input(tmp_path):
    (tmp_path/"p.jsonl").write_text('{"prompt": "Question: q. Answer the question concisely.", "predict": "a", "label": "b"}\n{"predict": 3, "label": "b", "question": "q"}\n')
    code, _, err = run_cli(M.vqa_main, [tmp_path/"p.jsonl", "--judge", "rules"])
    assert code == 1 and "p.jsonl row 2: 'predict' must be a string" in err
    write_vqa_csv(tmp_path/"VQA_result.csv", [("a.png", "x", "q?", "yes"), ("b.png", "x", "q?", "")])
    code, _, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules"])
    assert code == 1 and "VQA_result.csv row 2" in err


def test_bad_paths_are_refused_before_the_work(tmp_path):
    "Missing or non-UTF-8 references and output paths that are folders: clear errors, before anything is scored."
    (tmp_path/"p.jsonl").write_text('{"predict": "a ship", "label": "a ship"}\n')
    (tmp_path/"latin1.json").write_bytes('{"annotations": [{"image_id": 1, "caption": "Bélem"}]}'.encode("latin-1"))
    (tmp_path/"out").mkdir()
    for args, msg in (([tmp_path/"p.jsonl", "--refs", tmp_path/"missing.json"], "missing.json: file not found"),
                      ([tmp_path/"p.jsonl", "--refs", tmp_path/"latin1.json"], "latin1.json: not UTF-8 text"),
                      ([tmp_path/"p.jsonl", "--json", tmp_path/"out"], "--json is a folder"),
                      ([tmp_path/"p.jsonl", "--per-sample", tmp_path/"out"], "--per-sample is a folder")):
        code, out, err = run_cli(M.captions_main, args)
        assert code == 1 and msg in err and out == "", (args, err)
    write_vqa_csv(tmp_path/"VQA_result.csv", [("a.png", "yes", "q?", "yes")])
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules", "--json", tmp_path/"out"])
    assert code == 1 and "--json is a folder" in err and out == ""

# ---------------------------------------------------------------- the stage
def test_evaluate_run_on_inference_like_rows(tmp_path):
    rd = RunDir(tmp_path/"run").create()
    for model, mode in (("qwen2-vl", "zero-shot"), ("blip", "lora")):
        d = rd.predictions(model, mode); d.mkdir(parents=True)
        rows = [dict(prompt="<image>Describe the content of this image in one sentence.", predict=p, label="two ships near a harbor",
                     image=f"SARimages/{i:07d}.png", application="", question="", kind="caption", style="complex") for i, p in enumerate(["two ships", ""])]
        rows += [dict(prompt=f"<image>Question: {q}. Answer the question concisely.", predict=p, label=a, image="SARimages/0000009.png",
                      application="", question=q, kind="vqa", style="") for q, a, p in [("How many ships are there?", "2", "2"), ("Is there a car?", "no", "yes")]]
        (d/"generated_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_vqa_csv(d/"VQA_result.csv", [("SARimages/0000009.png", "2", "How many ships are there?", "2")])
    outs = M.evaluate_run(rd, judge="rules")
    names = sorted(o.name for o in outs)
    assert "vqa_blip_lora.json" in names and "captions_qwen2-vl_zero-shot_complex.json" in names and len(names) == 8
    v = read_json(rd.metrics/"vqa_blip_lora.json")
    assert (v["n"], v["accuracy"]) == (2, 0.5)                      # the jsonl rows, not VQA_result.csv as well
    c = read_json(rd.metrics/"captions_qwen2-vl_zero-shot_complex.json")
    assert c["n"] == 2 and c["empty_predictions"] == 1 and c["tokenize"] == "official"

def test_mixed_files_each_reader_takes_its_rows(tmp_path):
    cap = "<image>Describe the content of this image in one sentence."
    rows = [dict(prompt=cap, predict="two ships", label="two ships in a harbor", image="a.png", kind="caption", style="complex", question="", application=""),
            dict(prompt="<image>Question: Is there a ship?. Answer the question concisely.", predict="yes", label="Yes", image="a.png",
                 kind="vqa", style="", question="Is there a ship?", application="object identification")]
    (tmp_path/"generated_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(M.captions_main, [tmp_path/"generated_predictions.jsonl"])
    assert code == 0 and (json.loads(out)["n"], json.loads(out)["skipped_rows"]) == (1, 1), err
    code, out, err = run_cli(M.vqa_main, [tmp_path/"generated_predictions.jsonl", "--judge", "rules"])
    assert code == 0 and (json.loads(out)["n"], json.loads(out)["accuracy"], json.loads(out)["skipped_rows"]) == (1, 1.0, 1), err
    write_vqa_csv(tmp_path/"VQA_result.csv", [("a.png", "two ships", "Describe the content of this image in one sentence.", "two ships in a harbor"),
                                              ("a.png", "yes", "Is there a ship?", "Yes")])
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules"])
    assert code == 0 and (json.loads(out)["n"], json.loads(out)["skipped_rows"]) == (1, 1), err
    (tmp_path/"vqa_only.jsonl").write_text(json.dumps(rows[1]) + "\n")
    code, out, err = run_cli(M.captions_main, [tmp_path/"vqa_only.jsonl"])
    assert code == 1 and "no caption rows in the file (1 VQA rows skipped)" in err

# ---------------------------------------------------------------- issue 17: numbers never published silently
@pytest.mark.parametrize("reply", ["not 1", "1 - not a match", "1 or 0", "Yes", "no", "10", "1, 0", "0.5", "Answer: maybe 1", ""])
def test_judge_reply_must_be_a_clear_0_or_1(reply):
    with pytest.raises(ValueError): M.parse_judge(reply)

@pytest.mark.parametrize("reply, value", [("1", 1), (" 0\n", 0), ("1.", 1), ("**1**", 1), ("`0`", 0), ('"1"', 1)])
def test_judge_reply_clear_forms(reply, value):
    assert M.parse_judge(reply) == value

def judge_needed_rows(n):
    return [(f"SARimages/{i:07d}.png", f"class {i} beta", "What is the main land cover?", f"category {i} alpha") for i in range(n)]

@pytest.mark.parametrize("cache", [True, False])
def test_judge_401_says_why_and_whether_cached(tmp_path, cache):
    write_vqa_csv(tmp_path/"VQA_result.csv", [("a.png", "yes", "Is there a ship?", "yes"), *judge_needed_rows(5)])
    with ChatTestServer(fault=lambda n, req: "401") as srv:
        args = [tmp_path/"VQA_result.csv", "--base-url", srv.base_url, "--quiet", "--json", tmp_path/"r.json", "--per-sample", tmp_path/"per.csv"]
        args += ["--cache", tmp_path/"c.sqlite"] if cache else ["--no-cache"]
        code, out, err = run_cli(M.vqa_main, args)
    assert code == 3
    assert "HTTP 401" in err and "5 row(s)" in err
    assert "the endpoint said 'Incorrect API key provided'" in err, err   # the status and the server's own message
    if cache: assert "cached" in err and "not cached" not in err
    else: assert "nothing is cached" in err and "answers so far are cached" not in err
    rep = read_json(tmp_path/"r.json")
    assert rep["llm_errors"] == 5 and rep["judge_errors"] == {"HTTP 401": 5} and rep["judged_by_llm"] == 0
    assert "5 of 6 rows" in rep["caveat"]
    per = list(csv.DictReader(open(tmp_path/"per.csv")))
    assert "error" in per[0] and sum("HTTP 401" in r["error"] for r in per) == 5 and per[0]["error"] == ""

def test_timeouts_say_why(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", judge_needed_rows(2))
    with ChatTestServer(fault=lambda n, req: "hang", hang=1.0) as srv:
        code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", srv.base_url, "--quiet", "--no-cache",
                                              "--timeout", 0.2, "--max-retries", 0])
    assert code == 3 and "timeout" in err and "--timeout" in err

def test_rows_failed_at_inference_are_counted_not_scored(tmp_path):
    rows = [dict(question="How many ships?", predict="3", label="3"), dict(question="Is there a car?", predict="", label="no", error="image unreadable"),
            dict(question="Is there a tank?", predict="yes", label="yes")]
    (tmp_path/"p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(M.vqa_main, [tmp_path/"p.jsonl", "--judge", "rules", "--per-sample", tmp_path/"per.csv"])
    assert code == 0, err
    rep = json.loads(out)
    assert (rep["n"], rep["correct"], rep["accuracy"], rep["failed_rows"]) == (2, 2, 1.0, 1)
    assert rep["accuracy_failed_as_wrong"] == pytest.approx(2/3) and "1 row failed at inference" in rep["caveat"]
    assert "1 failed" in err                                             # the table says it too
    per = list(csv.DictReader(open(tmp_path/"per.csv")))
    assert [(r["how"], r["error"]) for r in per] == [("contains", ""), ("failed", "image unreadable"), ("contains", "")]

def test_unbalanced_quote_is_an_error_naming_the_row(tmp_path):
    (tmp_path/"VQA_result.csv").write_text('a.png,yes,Is there a ship?,yes\nb.png,"no,Is there a car?,no\nc.png,2,How many?,2\n'
                                           'd.png,3,How many?,3\ne.png,"x",What?,y\nf.png,yes,Is there?,yes\n')
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules"])
    assert code == 1 and out == "" and "row 2" in err and "quote" in err, err
    (tmp_path/"eof.csv").write_text('a.png,yes,Is there a ship?,yes\nb.png,"no,Is there a car?,no\nc.png,2,How many?,2\n')
    code, out, err = run_cli(M.vqa_main, [tmp_path/"eof.csv", "--judge", "rules"])
    assert code == 1 and "row 2" in err and "quote" in err, err
    write_vqa_csv(tmp_path/"ok.csv", [("a.png", "two\nlines, really", "What is it?", "two")])   # a quoted newline is fine
    code, out, err = run_cli(M.vqa_main, [tmp_path/"ok.csv", "--judge", "rules"])
    assert code == 0 and json.loads(out)["n"] == 1, err

def test_duplicate_rows_reported(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", [("a.png", "yes", "Is there a ship?", "yes"), ("b.png", "2", "How many?", "2"),
                                              ("a.png", "yes", "Is there a ship?", "yes")])
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--judge", "rules"])
    assert code == 0
    rep = json.loads(out)
    assert rep["duplicate_rows"] == 1 and rep["first_duplicates"] == [[3, 1]] and "duplicate" in err

@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:abc/v1", "http://[bad"])
def test_malformed_base_url_is_a_usage_error(tmp_path, url):
    write_vqa_csv(tmp_path/"VQA_result.csv", judge_needed_rows(1))
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", url, "--no-cache"])
    assert code == 2 and "--base-url" in err and "Traceback" not in err and out == ""

def test_llm_calls_never_exceed_what_the_server_received(tmp_path):
    write_vqa_csv(tmp_path/"VQA_result.csv", judge_needed_rows(60))
    with ChatTestServer(reply=lambda req: "1", fault=lambda n, req: "hang" if n % 5 == 0 else None, hang=0.5) as srv:
        code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", srv.base_url, "--quiet", "--no-cache",
                                              "--concurrency", 32, "--timeout", 0.25, "--max-retries", 3, "--backoff", 0.001])
        time.sleep(0.6)
        rep = json.loads(out)
        assert rep["llm_calls"] <= srv.requests <= rep["llm_attempts"] and rep["llm_calls"] < rep["llm_attempts"]

def stage_run(tmp_path):
    rd = RunDir(tmp_path/"run").create()
    rd.write_manifest("11_inference", [])                            # the required stage, as if it had run
    d = rd.predictions("qwen2-vl", "zero-shot"); d.mkdir(parents=True)
    rows = [dict(prompt="<image>Question: What is the main land cover?. Answer the question concisely.", predict=f"class {i}", label=f"category {i}",
                 image=f"SARimages/{i:07d}.png", question="What is the main land cover?", kind="vqa") for i in range(4)]
    (d/"generated_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rd

def test_stage_fails_when_the_judge_failed(tmp_path):
    rd = stage_run(tmp_path)
    with ChatTestServer(fault=lambda n, req: "401") as srv:
        with pytest.raises(M.SarlangError, match="4 of 4 VQA rows got no judgement") as e:
            M.run_stage(rd, judge="official", base_url=srv.base_url)
    assert "HTTP 401" in str(e.value)
    assert rd.manifest("12_metrics") is None and not rd.stage_complete("12_metrics")
    m = read_json(rd.metrics/"vqa_qwen2-vl_zero-shot.json")          # the metric file is there to read, and says so
    assert m["llm_errors"] == 4 and "4 of 4 rows" in m["caveat"]
    with ChatTestServer(reply=lambda req: "1") as srv:                # the judge back: the stage completes
        outs = M.run_stage(rd, judge="official", base_url=srv.base_url)
    assert rd.stage_complete("12_metrics") and read_json(rd.metrics/"vqa_qwen2-vl_zero-shot.json")["accuracy"] == 1.0 and outs

def test_stage_on_an_empty_run_fails(tmp_path):
    rd = RunDir(tmp_path/"run").create(); rd.write_manifest("11_inference", [])
    with pytest.raises(M.SarlangError, match="nothing to score"): M.run_stage(rd, judge="rules")
    assert rd.manifest("12_metrics") is None

def test_metric_line_shows_the_counts():
    rep = dict(accuracy=0.5, n=4, correct=2, judge="rules", unjudged=1, llm_errors=0, invalid=0, failed_rows=2, skipped_rows=3, duplicate_rows=0)
    line = M.metric_line("vqa_x.json", rep)
    assert "accuracy 0.5000" in line and "1 unjudged" in line and "2 failed" in line and "3 skipped" in line

@pytest.mark.parametrize("flag, value", [("--concurrency", 0), ("--max-retries", -1), ("--timeout", 0), ("--timeout", "nan"), ("--backoff", -1)])
def test_out_of_range_numbers_are_usage_errors(tmp_path, flag, value):
    write_vqa_csv(tmp_path/"VQA_result.csv", judge_needed_rows(1))
    code, out, err = run_cli(M.vqa_main, [tmp_path/"VQA_result.csv", "--base-url", "http://127.0.0.1:9/v1", "--no-cache", flag, value])
    assert code == 2 and flag in err and out == "" and "Traceback" not in err

def test_caption_failed_and_duplicate_rows_reported(tmp_path):
    rows = [{"predict": "two ships", "label": "two ships in a harbor", "image": "a.png"},
            {"predict": "", "label": "a bridge", "image": "b.png", "error": "image unreadable"},
            {"predict": "two ships", "label": "two ships in a harbor", "image": "a.png"}]
    (tmp_path/"p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(M.captions_main, [tmp_path/"p.jsonl"])
    s = json.loads(out)
    assert code == 0 and (s["n"], s["failed_rows"], s["duplicate_rows"], s["first_duplicates"]) == (2, 1, 1, [[3, 1]])
    assert "1 row(s) failed at inference" in err and "duplicate" in err


@pytest.mark.parametrize("main, flags", [
    (M.captions_main, ["--refs", "--tokenize", "--meteor", "--allow-empty", "--per-sample", "--json"]),
    (M.vqa_main, ["--judge", "--model", "--base-url", "--concurrency", "--max-retries", "--timeout", "--backoff", "--cache",
                  "--no-cache", "--by", "--json", "--per-sample", "--quiet"])])
def test_commands_keep_their_flags(main, flags):
    "The commands are built by sarlang_nb.cli from docments; every flag of the hand-written parsers is still there."
    code, out, err = run_cli(main, ["--help"])
    assert code == 0 and "PRED" in out
    for f in flags: assert f in out, f

def test_usage_errors_are_status_2(tmp_path):
    code, out, err = run_cli(M.vqa_main, ["x.csv", "--judge", "gpt"])
    assert code == 2 and "invalid choice: 'gpt'" in err and "Traceback" not in err
    code, out, err = run_cli(M.captions_main, [])
    assert code == 2 and "PRED" in err
    code, out, err = run_cli(M.vqa_main, [tmp_path/"missing.csv", "--judge", "rules"])
    assert code == 1 and err.startswith("sarlang-eval-vqa: error: ") and "missing.csv" in err
