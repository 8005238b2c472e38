"""The paper profile on a data root shaped like the published SARLANG-1M release (issue 18): every stage runs on it,
every manifest and table says its data is the release, nothing toy or synthetic is used, and a missing input fails
the stage that needs it, by name."""
import json, os, re, shutil
from pathlib import Path
import pytest
from sarlang_nb.core import RunDir, read_json

os.environ["SARLANG_PROGRESS"] = "0"


@pytest.fixture(scope="module")
def release(tmp_path_factory, cli):
    "A release-shaped data root, made by the console command users run to see the expected shape."
    root = tmp_path_factory.mktemp("rel")/"SARLANG-1M"
    r = cli("sarlang-synth", "--release-layout", "--out", root, "--n-scenes", "24", "--size", "128")
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    "Tiny Qwen2-VL weights in a Hugging Face folder, given with --model-path as real weights would be."
    from sarlang_nb.models import load_vlm
    d = tmp_path_factory.mktemp("weights")/"qwen2-vl-tiny"
    load_vlm("qwen2-vl").save_base(d)
    return d


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    "A tiny CLIP in a Hugging Face folder, the retrieval stage's --param clip_path."
    from sarlang_nb.retrieval import load_clip
    return load_clip(None).save(tmp_path_factory.mktemp("clip")/"tiny-clip")


@pytest.fixture(scope="module")
def cli():
    from conftest import run_cli
    return run_cli


def test_fixture_has_the_release_shape(release):
    assert sorted(p.name for p in release.iterdir()) == ["SARimages", "Text"]
    names = [p.name for p in (release/"SARimages").iterdir()]
    assert any(re.fullmatch(r"[A-Z][a-z]+_[A-Za-z-]+_[A-Za-z-]+_\d+\.png", n) for n in names)       # France_Alpes-Maritimes_Nice_3.png
    assert any(re.fullmatch(r"SV_[A-Za-z]+_-?\d+\.\d{4}_-?\d+\.\d{4}\.png", n) for n in names)      # SV_Darwin_-12.4278_130.8688.png
    assert {n.rsplit(".", 1)[1] for n in names if re.fullmatch(r"\d{7}\.\w+", n)} == {"jpg", "bmp", "png"}
    assert {Path(n).stem for n in names if n.endswith(".tif")} <= {Path(n).stem for n in names if n.endswith(".png")}
    for f in ("Caption-training", "Caption_test", "Caption_test1"):
        assert (release/"Text/caption"/f"{f}.csv").exists() and (release/"Text/caption"/f"{f}.json").exists()
    for sp in ("train", "test"):
        for s in ("SARVQA1", "SARVQA2"):
            recs = json.loads((release/"Text/VQA"/sp/f"{s}_{sp}.json").read_text())
            assert all(set(rec) == {"messages", "images"} for rec in recs)   # no provenance keys the release does not have
            assert (release/"Text/VQA"/sp/f"{s}_{sp}.csv").exists()


@pytest.fixture(scope="module")
def paper_run(release, weights, clip_weights, tmp_path_factory, cli):
    "`sarlang-reproduce --profile paper` on the release, every stage, no --stages; a local server as the GPT judge."
    from sarlang_nb.testing import ChatTestServer
    run = tmp_path_factory.mktemp("paper")/"run"
    with ChatTestServer(reply=lambda req: "1") as srv:
        r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", run,
                "--model-path", f"qwen2-vl={weights}", "--param", "device=cpu", "--param", "max_train_steps=2",
                "--param", "max_new_tokens=8", "--param", f"base_url={srv.base_url}", "--param", f"clip_path={clip_weights}",
                "--param", 'ablation_models=["qwen2-vl"]', "--param", "paper_figures=null",   # not into the checkout's paper_figures/
                env={"OPENAI_API_KEY": "sk-local-test-not-a-real-key"}, timeout=1500)
    return run, r


def test_paper_profile_runs_every_stage_on_the_release(paper_run):
    run, r = paper_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rd = RunDir(run)
    summary = read_json(rd.manifests/"reproduce.json")
    from sarlang_nb.reproduce import stage_notebooks
    assert summary["ran"] == [nb.stem for nb in stage_notebooks()] and not summary["skipped"]
    for st in summary["ran"]:
        m = rd.manifest(st)
        assert m and m["complete"], st
        if "data" in m: assert m["data"] == "release", (st, m["data"])
    for st in ("05_vqa", "06_captions", "07_splits", "08_similarity", "10_finetune", "11_inference"):
        assert rd.manifest(st)["data"] == "release", st
    assert rd.manifest("05_vqa")["workflow"] == "release" and not (rd.path/"Text"/"records").exists()   # nothing generated
    assert "data: release" in (rd.tables/"table6_splits.md").read_text()
    assert "this run (data: release)" in (rd.tables/"table3_similarity.md").read_text()
    abl = read_json(rd.predictions("qwen2-vl", "zero-shot-raw")/"ablation.json")     # Tables 10-11 on the release's originals
    assert abl["data"] == "release" and abl["examples"] > 0 and ".tif" in abl["images"]


def test_models_without_weights_are_skipped_and_named(paper_run):
    run, r = paper_run
    sk = RunDir(run).manifest("10_finetune")["skipped"]
    assert set(sk) == {"qwen2.5-vl", "llava-1.5", "blip"} and sk["blip"] == "no weights: add --model-path blip=DIR"
    assert list(RunDir(run).manifest("10_finetune")["train_metrics"]) == ["qwen2-vl"]


def test_the_release_split_is_kept(paper_run, release):
    from sarlang_nb.splits import read_release_splits, image_key
    run, _ = paper_run
    ours, theirs = read_release_splits(run), read_release_splits(release)
    for k in (0, 1):
        assert sorted((image_key(r), r["split"]) for r in ours[k]) == sorted((image_key(r), r["split"]) for r in theirs[k])


def test_nothing_toy_or_synthetic_in_the_run(paper_run):
    run, _ = paper_run
    hits = []
    def text_of(p):   # a notebook's sources and text outputs (its PNGs are base64, where "/toy" can occur by chance)
        if p.suffix != ".ipynb": return p.read_text(errors="replace")
        nb = json.loads(p.read_text())
        parts = ["".join(c["source"]) for c in nb["cells"]]
        for c in nb["cells"]:
            for o in c.get("outputs", []):
                parts.append("".join(o.get("text", "")))
                parts += ["".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
        return "\n".join(parts)
    vocab = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt")   # a tokenizer's vocabulary holds the English word "toy"
    for p in Path(run).rglob("*"):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".csv", ".ipynb", ".txt") and p.name not in vocab:
            t = text_of(p)
            if re.search(r"\btoy", t, re.I): hits.append(str(p.relative_to(run)))
            if p.suffix != ".ipynb":                           # what the stages wrote (a notebook's code may name the other provenances)
                for line in t.splitlines():
                    if re.search(r'"data":\s*"synthetic world"|\bsynthetic world\b.*\bdata\b', line): hits.append(f"{p.relative_to(run)}: {line.strip()[:80]}")
    assert not hits, hits
    assert not (Path(run)/"world").exists() and not (Path(run)/"toy").exists()


def test_a_missing_input_fails_the_stage_naming_it(release, weights, tmp_path, cli):
    broken = tmp_path/"rel"; shutil.copytree(release, broken)
    shutil.rmtree(broken/"Text"/"caption")
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", broken, "--run-dir", tmp_path/"run",
            "--model-path", f"qwen2-vl={weights}", "--param", "device=cpu", "--stages", "00,06")
    assert r.returncode == 1 and "no caption files in the release" in r.stderr and "Text/caption" in r.stderr
    shutil.rmtree(broken/"SARimages")
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", broken, "--run-dir", tmp_path/"run2", "--stages", "00")
    assert r.returncode == 1 and "no SARimages/ folder" in r.stderr


def test_a_stage_whose_required_stage_has_not_run_says_what_to_run(release, weights, tmp_path, cli):
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", tmp_path/"run",
            "--model-path", f"qwen2-vl={weights}", "--param", "device=cpu", "--stages", "00,10")
    assert r.returncode == 1 and "needs stage 02_preprocess, which has not completed" in r.stderr
    assert "--stages 02_preprocess" in r.stderr


def test_rebuild_workflow_names_the_source_parameters(release, tmp_path, cli):
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", tmp_path/"run",
            "--param", "workflow=rebuild", "--param", "device=cpu", "--stages", "00,05")
    assert r.returncode == 1 and "--param sardet_annotations=DIR" in r.stderr


def test_config_values_for_a_subset_of_stages(release, tmp_path, cli):
    "--param device=cpu with stages that exclude 00_core updates config.json instead of being refused."
    run = tmp_path/"run"
    assert cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", run, "--stages", "00,04").returncode == 0
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", run, "--param", "device=cpu", "--stages", "05")
    assert r.returncode == 0, r.stderr
    assert RunDir(run).config["device"] == "cpu" and "stage 00_core not selected" in r.stdout


def test_the_originals_are_preprocessed_when_asked(release, tmp_path, cli):
    "images=tif: stage 02 preprocesses the release's .tif originals into the run, where later stages find them first."
    run = tmp_path/"run"
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", run, "--param", "device=cpu",
            "--param", "images=tif", "--stages", "00,02")
    assert r.returncode == 0, r.stderr
    m = RunDir(run).manifest("02_preprocess")
    tifs = sorted(p.stem for p in (release/"SARimages").glob("*.tif"))
    assert m["images"] == "tif" and m["data"] == "release" and sorted(Path(o).stem for o in m["outputs"]) == tifs
    from sarlang_nb.finetune import load_examples
    f = run/"Text"/"caption"/"Caption-training.csv"; shutil.copyfile(release/"Text"/"caption"/"Caption-training.csv", f)   # as stage 07 writes it
    ex = load_examples([f], True, None, [release])             # the run's images come before the release's own
    assert all(Path(e["image"]).is_relative_to(run) for e in ex if Path(e["image"]).stem in tifs)
    r = cli("sarlang-reproduce", "--profile", "paper", "--data-root", release, "--run-dir", tmp_path/"r2", "--param", "images=jpeg", "--stages", "00,02")
    assert r.returncode == 1 and "images must be 'png'" in r.stderr
