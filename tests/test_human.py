"The human-comparison kit: `sarlang-human-eval make` / `score`, round trips, agreement, intervals, a real browser."
import csv, json, re, shutil, time
from collections import Counter
from pathlib import Path
import pytest
from sarlang_nb.core import SarlangError, read_json
from sarlang_nb.human import (wilson, separation_note, questions_to_separate, quotas, draw_questions, make_kit, make_demo_run,
                              score_sheets, read_sheet, parse_sheet_arg, fleiss, SHEET_COLUMNS)


# --- intervals and agreement -----------------------------------------------------------------------------------------

def test_wilson_matches_statsmodels_and_the_textbook():
    from statsmodels.stats.proportion import proportion_confint
    for k in range(31): assert wilson(k, 30) == pytest.approx(proportion_confint(k, 30, method="wilson"), abs=1e-12)
    # Newcombe (1998), Table I, example (iii): 81/263 -> 0.2553-0.3662 (Wilson)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    with pytest.raises(SarlangError): wilson(1, 0)

def test_thirty_questions_cannot_separate_the_papers_rows():
    (a0, a1), (b0, b1) = wilson(0.5776*30, 30), wilson(19, 30)
    assert a0 < b0 < a1 < b1                       # overlapping intervals
    assert questions_to_separate(0.5776, 0.6333) > 1000
    assert "30 questions cannot separate 57.8 % from 63.3 %" in separation_note()

def _fleiss_by_hand(ratings):
    "Fleiss (1971), written out: P_i = (sum_j n_ij^2 - n) / (n(n-1)), P_e = sum_j p_j^2."
    n, N = len(ratings[0]), len(ratings)
    cats = sorted({c for r in ratings for c in r})
    counts = [[r.count(c) for c in cats] for r in ratings]
    P = [(sum(x*x for x in row) - n)/(n*(n - 1)) for row in counts]
    p = [sum(row[j] for row in counts)/(N*n) for j in range(len(cats))]
    Pbar, Pe = sum(P)/N, sum(x*x for x in p)
    return (Pbar - Pe)/(1 - Pe)

def test_fleiss_kappa_on_textbook_examples():
    # Fleiss (1971): 10 subjects, 14 raters, 5 categories -> kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, k in enumerate(row) for _ in range(k)] for row in table]
    assert fleiss(ratings) == pytest.approx(0.2099307, abs=1e-7)
    # by hand: 3 items, 3 raters, correct (1) / wrong (0):
    # item counts (0s, 1s) = (0, 3), (3, 0), (1, 2); P_i = 1, 1, 1/3 -> Pbar = 7/9; p = (4/9, 5/9) -> Pe = 41/81
    # kappa = (7/9 - 41/81) / (1 - 41/81) = (22/81) / (40/81) = 0.55
    small = [[1, 1, 1], [0, 0, 0], [1, 1, 0]]
    assert fleiss(small) == pytest.approx(0.55, abs=1e-12) == pytest.approx(_fleiss_by_hand(small), abs=1e-12)
    assert fleiss([[1, 1], [1, 1]]) is None and fleiss([[1], [0]]) is None


# --- drawing and making the kit --------------------------------------------------------------------------------------

def test_quotas_and_the_seeded_stratified_draw():
    assert quotas({"a": 40, "b": 3, "c": 20}, 30) == {"a": 14, "b": 3, "c": 13}
    assert quotas({"a": 5, "b": 5, "c": 5, "d": 5, "e": 5, "f": 5}, 30) == dict.fromkeys("abcdef", 5)
    recs = [dict(image=f"{i}.png", question=f"q{i}", answer="x", application=a)
            for i, a in enumerate(["object identification"]*50 + ["region referring"]*50 + ["others"]*50)]
    d0, d0b, d1 = draw_questions(recs, 30, 0), draw_questions(recs, 30, 0), draw_questions(recs, 30, 1)
    assert d0 == d0b and d0 != d1
    assert Counter(r["application"] for r in d0) == {"object identification": 10, "region referring": 10, "others": 10}
    assert len({r["question"] for r in d0}) == 30
    with pytest.raises(SarlangError, match="only 150 available"): draw_questions(recs, 151)

def test_make_writes_a_self_contained_questionnaire(tmp_path):
    rd = make_demo_run(tmp_path/"run")
    html_f, sheet_f, key_f = make_kit(rd.path)
    key, page = read_json(key_f), html_f.read_text(encoding="utf-8")
    assert len(key["items"]) == 30 and key["seed"] == 0 and key["available"] == 40
    assert Counter(it["application"] for it in key["items"]) == {"object identification": 8, "instance counting": 8, "object positioning": 7, "others": 7}
    # everything embedded: 30 data: images, no link/script/img pointing anywhere else
    assert page.count('src="data:image/png;base64,') == 30
    assert not re.search(r'(?:src|href)="(?!data:|#)', page) and "http" not in page.lower().replace("http-equiv", "")
    assert "<link" not in page and "@import" not in page
    # no ground truth in the page: the answers of the free-text application are nowhere in it
    assert not any(it["gt"] in page for it in key["items"] if it["application"] == "others")
    with open(sheet_f, newline="") as f: sheet = list(csv.DictReader(f))
    assert list(sheet[0]) == SHEET_COLUMNS and [r["item"] for r in sheet] == [it["item"] for it in key["items"]]
    assert all(r["answer"] == "" for r in sheet)
    # SARDet-derived questions are shown as the models get them, with the class list
    cnt = [it for it in key["items"] if it["application"] == "instance counting"]
    assert all(it["question"].startswith("The classes are: tank, car, aircraft, harbor, bridge, ship. ") for it in cnt)

def test_make_refuses_a_run_without_test_questions(tmp_path, cli):
    r = cli("sarlang-human-eval", "make", tmp_path)
    assert r.returncode == 1 and "no VQA files" in r.stderr and "07_splits" in r.stderr


# --- the round trip --------------------------------------------------------------------------------------------------

def _fill(path, items, answers, person="", group=""):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(SHEET_COLUMNS)
        for it, a in zip(items, answers): w.writerow([it["item"], it["application"], it["question"], a, person, group])
    return path

def test_round_trip_known_accuracies_and_kappa(tmp_path, cli):
    rd = make_demo_run(tmp_path/"run")
    _, _, key_f = make_kit(rd.path)
    items = read_json(key_f)["items"]
    right = lambda it: it["gt"]
    wrong = "qqq"
    # experts: all right; right except the first 6; right on every second question. Lay: right only on yes/no questions.
    known = {"e1": [True]*30, "e2": [i >= 6 for i in range(30)], "e3": [i % 2 == 0 for i in range(30)],
             "l1": [it["gt"] in ("Yes", "No") for it in items]}
    sheets = []
    for p, ok in known.items():
        f = _fill(tmp_path/f"{p}.csv", items, [right(it) if o else wrong for it, o in zip(items, ok)])
        sheets.append(f"{'expert' if p[0] == 'e' else 'lay'}={f}")
    r = cli("sarlang-human-eval", "score", key_f, *sheets)
    assert r.returncode == 0, r.stderr
    res = read_json(key_f.parent/"scores.json")
    acc = {p["person"]: p["accuracy"] for p in res["persons"]}
    assert acc == {p: sum(ok)/30 for p, ok in known.items()}
    g = {x["group"]: x for x in res["groups"]}
    assert g["expert"]["accuracy"] == pytest.approx((1 + 24/30 + 15/30)/3) and g["expert"]["persons"] == 3
    assert g["expert"]["correct"] == 30 + 24 + 15 and g["expert"]["answers"] == 90
    assert g["expert"]["ci95"] == pytest.approx(list(wilson(69, 90)))
    assert g["lay"]["accuracy"] == pytest.approx(sum(known["l1"])/30)
    ratings = [[int(known[p][i]) for p in known] for i in range(30)]
    assert res["fleiss_kappa_correctness"] == pytest.approx(_fleiss_by_hand(ratings), abs=1e-12)
    assert g["expert"]["fleiss_kappa_correctness"] == pytest.approx(_fleiss_by_hand([row[:3] for row in ratings]), abs=1e-12)
    # per application: e2's misses are the first six questions
    apps = Counter(it["application"] for it in items[:6])
    e2 = next(p for p in res["persons"] if p["person"] == "e2")
    for a, v in e2["per_application"].items():
        n_a = sum(it["application"] == a for it in items)
        assert v["n"] == n_a and v["correct"] == n_a - apps.get(a, 0)
    per = list(csv.DictReader(open(key_f.parent/"answers_judged.csv")))
    assert len(per) == 120 and {r["how"] for r in per} <= {"contains", "exact", "unjudged"}
    md = (key_f.parent/"scores.md").read_text()
    assert "| expert | 3 |" in md and "Per application" in md and "cannot separate" in md

def test_score_uses_the_models_judge(tmp_path):
    "An answer that only an LLM could accept is wrong under the run's `rules` judge, exactly as for the models."
    from sarlang_nb.metrics import evaluate_vqa
    rd = make_demo_run(tmp_path/"run")
    _, _, key_f = make_kit(rd.path, n=8)
    items = read_json(key_f)["items"]
    answers = [("the answer is " + it["gt"]) if i % 2 else "something else" for i, it in enumerate(items)]
    f = _fill(tmp_path/"p.csv", items, answers, "p", "lay")
    res = score_sheets(key_f, [(None, f)])
    rep, _ = evaluate_vqa([dict(question=it["question"], gt=it["gt"], predict=a) for it, a in zip(items, answers)], "rules")
    assert res["judge"] == "rules" and res["persons"][0]["accuracy"] == rep["accuracy"]

def test_sheet_errors_name_the_file_and_row(tmp_path, cli):
    rd = make_demo_run(tmp_path/"run")
    _, _, key_f = make_kit(rd.path, n=4)
    items = {it["item"]: it for it in read_json(key_f)["items"]}
    bad = tmp_path/"bad.csv"
    for text, msg in [("item,answer\nq01,a\nq77,b\n", "row 3: unknown item 'q77'"), ("item,answer\nq01,a\nq01,b\n", "row 3: item q01 answered twice"),
                      ("item,reply\nq01,a\n", "needs the columns item and answer"),
                      ("item,answer,person\nq01,a,ann\nq02,b,bob\n", "one person per sheet")]:
        bad.write_text(text)
        with pytest.raises(SarlangError, match=re.escape(msg)): read_sheet(bad, items, "lay")
    bad.write_text("item,answer\nq01,a\n")
    with pytest.raises(SarlangError, match="no group"): read_sheet(bad, items)
    s = read_sheet(bad, items, "lay")
    assert s["blank"] == 3 and s["person"] == "bad" and s["answers"]["q02"] == ""
    r = cli("sarlang-human-eval", "score", key_f, bad)
    assert r.returncode == 1 and "no group" in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert parse_sheet_arg("expert=a.csv") == ("expert", Path("a.csv")) and parse_sheet_arg("a.csv") == (None, Path("a.csv"))
    r = cli("sarlang-human-eval", "frobnicate")
    assert r.returncode == 2


# --- a real browser --------------------------------------------------------------------------------------------------

def _browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    drv = shutil.which("chromedriver")
    if not exe or not drv: pytest.skip("no chromium/chromedriver here (Debian: apt-get install chromium chromium-driver)")
    try: import selenium  # noqa: F401
    except ImportError: pytest.skip("selenium is not installed (pip install -e .[dev])")
    return exe, drv

def test_questionnaire_in_a_headless_browser(tmp_path):
    exe, drv_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    rd = make_demo_run(tmp_path/"run")
    html_f, _, key_f = make_kit(rd.path, n=12, seed=5)
    items = read_json(key_f)["items"]
    known = [i % 3 != 0 for i in range(len(items))]                 # 8 of 12 right
    dl = tmp_path/"downloads"; dl.mkdir()
    opts = Options(); opts.binary_location = exe
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"): opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(dl), "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(drv_path), options=opts)
    try:
        d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(dl)})
        d.get(html_f.as_uri())
        imgs = d.find_elements(By.TAG_NAME, "img")
        assert len(imgs) == 12 and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im) == 24 for im in imgs)
        assert d.execute_script("return performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length") == 0
        d.find_element(By.ID, "person").send_keys("Dr. Åsa \"Q\" Test")
        Select(d.find_element(By.ID, "group")).select_by_value("expert")
        for it, ok in zip(items, known):
            d.find_element(By.ID, "a-" + it["item"]).send_keys(it["gt"] if ok else "qqq, with a comma")
        d.find_element(By.ID, "export").click()
        t0, got = time.time(), []
        while time.time() - t0 < 20 and not got:
            got = [p for p in dl.glob("*.csv")]; time.sleep(0.2)
        status = d.find_element(By.ID, "status").text
    finally:
        d.quit()
    assert got, f"no download (status: {status!r})"
    f = got[0]
    assert f.name == "answers_Dr_sa_Q_Test.csv" and "Saved" in status
    rows = list(csv.DictReader(open(f, newline="", encoding="utf-8")))
    assert [r["person"] for r in rows] == ['Dr. Åsa "Q" Test']*12 and {r["group"] for r in rows} == {"expert"}
    res = score_sheets(key_f, [parse_sheet_arg(str(f))])            # the group comes from the sheet's own column
    assert res["groups"][0]["group"] == "expert" and res["persons"][0]["person"] == 'Dr. Åsa "Q" Test'
    assert res["persons"][0]["correct"] == sum(known) and res["persons"][0]["accuracy"] == pytest.approx(8/12)
