"Foundation: the CLI, a smoke run, failures, resume, secrets, docs, the wheel."
import json, os, subprocess, sys, zipfile
from pathlib import Path
import nbformat, pytest
from conftest import ROOT, run_cli, stage_notebook as _nb
from sarlang_nb.core import SarlangError, RunDir, resolve_config
from sarlang_nb.reproduce import stage_notebooks

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"

def test_reproduce_help_documents_every_flag():
    r = run_cli("sarlang-reproduce", "--help")
    assert r.returncode == 0
    for flag in ("--profile", "--run-dir", "--stages", "--data-root", "--model-path", "--resume", "--param", "--notebooks"):
        assert flag in r.stdout, flag
    assert "smoke" in r.stdout and "paper" in r.stdout

def test_stages_are_the_numbered_notebooks():
    names = [p.stem for p in stage_notebooks()]
    assert names[:2] == ["00_core", "01_sario"]
    assert all(int(n[:2]) < 90 for n in names) and names == sorted(names)

def test_smoke_run_resume_and_no_secret_leak(tmp_path):
    run = tmp_path/"run"
    env = {"OPENAI_API_KEY": SECRET, "MY_SERVICE_TOKEN": "tok-another-secret-42"}
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--stages", "00,01", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[1/2] 00_core" in r.stdout and "ok" in r.stdout and "ran 2 stage(s): 00_core, 01_sario" in r.stdout
    cfg = json.loads((run/"config.json").read_text())
    assert cfg["profile"] == "smoke"
    for nb in ("00_core", "01_sario"):
        assert (run/"notebooks"/f"{nb}.ipynb").exists()
        nbformat.read(run/"notebooks"/f"{nb}.ipynb", as_version=4)  # a valid executed notebook
    # the secrets in the environment appear nowhere in the run directory
    for p in run.rglob("*"):
        if p.is_file():
            b = p.read_bytes()
            assert SECRET.encode() not in b and b"tok-another-secret-42" not in b, p
    # resume skips complete stages; a deleted output makes its stage run again
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--stages", "00,01", "--resume")
    assert r.returncode == 0 and r.stdout.count("skipped (complete manifest)") == 2, r.stdout
    (run/"config.json").unlink()
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--stages", "00,01", "--resume")
    assert "ran 1 stage(s): 00_core" in r.stdout, r.stdout

def test_failing_stage_names_notebook_and_cell(tmp_path):
    nbs = tmp_path/"nbs"; nbs.mkdir()
    _nb(nbs/"00_fine.ipynb", "x = 1")
    _nb(nbs/"01_broken.ipynb", "y = 2", "raise ValueError('boom in stage')", "z = 3")
    _nb(nbs/"02_never.ipynb", "open('never-ran', 'w')")
    run = tmp_path/"run"
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--notebooks", nbs)
    assert r.returncode != 0
    assert "01_broken" in r.stderr and "cell" in r.stderr and "boom in stage" in r.stderr, r.stderr
    assert (run/"notebooks"/"01_broken.ipynb").exists()          # the partial notebook is kept
    assert not (run/"notebooks"/"02_never.ipynb").exists()       # later stages did not run
    assert "00_fine" in r.stdout and "FAILED" in r.stdout

def test_bad_arguments_are_clear(tmp_path):
    r = run_cli("sarlang-reproduce", "--run-dir", tmp_path/"r", "--profile", "paper")
    assert r.returncode == 1 and "--data-root" in r.stderr
    (tmp_path/"SARimages").mkdir(); (tmp_path/"Text").mkdir()                      # a release's folders
    r = run_cli("sarlang-reproduce", "--run-dir", tmp_path/"r", "--profile", "paper", "--data-root", tmp_path, "--model-path", "blip=/no/such")
    assert r.returncode == 1 and "--model-path blip=/no/such" in r.stderr
    r = run_cli("sarlang-reproduce", "--stages", "nope")
    assert r.returncode == 1 and "no stage matches 'nope'" in r.stderr
    r = run_cli("sarlang-reproduce", "--model-path", "oops")
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr

def test_config_refuses_secrets(tmp_path):
    rd = RunDir(tmp_path/"r").create()
    with pytest.raises(SarlangError, match="secret"): rd.write_config({"openai_api_key": "abc"})
    with pytest.raises(SarlangError, match="secret"): rd.write_config(resolve_config(note=SECRET))
    assert not rd.config_file.exists()

def test_docs_fallback_has_a_page_per_notebook(tmp_path):
    from sarlang_nb.docs import build_docs
    how, pages = build_docs(ROOT, tmp_path/"site", fallback=True)
    assert how == "offline-html"
    want = {p.stem for p in (ROOT/"nbs").glob("*.ipynb")}
    assert want <= {p.stem for p in pages}
    index = (tmp_path/"site"/"index.html").read_text()
    for stem in want - {"index"}: assert f'href="{stem}.html"' in index, stem

def test_wheel_ships_the_stage_notebooks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    whl, = tmp_path.glob("sarlang_nb-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for nb in stage_notebooks(): assert f"sarlang_nb/nbs/{nb.name}" in names, nb.name
    assert "sarlang_nb/reproduce.py" in names

def test_failed_rerun_is_not_skipped_by_resume(tmp_path):
    # a stage that completed once, then failed when run again, must run again under --resume: its old manifest
    # would otherwise still say "complete" while its outputs may be half rewritten
    from sarlang_nb.reproduce import reproduce, StageFailed
    nbs = tmp_path/"nbs"; nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('run_dir = None\nprofile = "smoke"\nfail = False'); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("from sarlang_nb.core import RunDir\nif fail: raise ValueError('second run broke')\n"
                                             "RunDir(run_dir).write_manifest('00_flaky', [])")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, nbs/"00_flaky.ipynb")
    run, out = tmp_path/"run", open(os.devnull, "w")
    assert reproduce(run, nbs=nbs, out=out)["ran"] == ["00_flaky"]
    with pytest.raises(StageFailed, match="second run broke"): reproduce(run, nbs=nbs, params={"fail": True}, out=out)
    assert not RunDir(run).stage_complete("00_flaky")
    assert reproduce(run, nbs=nbs, resume=True, out=out)["ran"] == ["00_flaky"]

def _runtime_closure():
    "Distributions installed because sarlang-nb needs them at run time (its extras, e.g. [dev], excluded)."
    import re
    from importlib import metadata
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    seen, todo = set(), ["sarlang-nb"]
    while todo:
        name = todo.pop()
        if norm(name) in seen: continue
        seen.add(norm(name))
        try: reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError: continue
        for r in reqs:
            if "extra ==" in r: continue
            todo.append(re.match(r"[A-Za-z0-9_.\-]+", r).group(0))
    return seen, norm

def test_shipped_notebooks_need_only_runtime_dependencies():
    "A wheel install runs the stage notebooks: everything they import must come with the package's runtime dependencies."
    import ast, sys
    from importlib import metadata
    closure, norm = _runtime_closure()
    dists = metadata.packages_distributions()
    missing = {}
    for nb in ROOT.glob("nbs/*.ipynb"):
        for c in nbformat.read(nb, as_version=4).cells:
            if c.cell_type != "code": continue
            try: tree = ast.parse("\n".join(l for l in c.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
            except SyntaxError: continue
            for n in ast.walk(tree):
                mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module] if isinstance(n, ast.ImportFrom) and n.module and not n.level else []
                for m in mods:
                    top = m.split(".")[0]
                    if top in sys.stdlib_module_names or top == "sarlang_nb": continue
                    if not any(norm(d) in closure for d in dists.get(top, [])): missing.setdefault(top, nb.name)
    assert not missing, f"imported by shipped notebooks but not a runtime dependency: {missing}"


def _stand_in_stages(folder):
    "Two tiny stage notebooks with parameters cells like the real 00_core and 02_preprocess."
    folder.mkdir()
    for name, params in (("00_core", 'run_dir = None\nprofile = "smoke"\ndata_root = None\nmodel_paths = {}\noverrides = {}\n'),
                         ("02_preprocess", 'run_dir = None\nprofile = "smoke"\nrule = "closest"\npercentiles = [2, 98]\nenl = None\npaper_values = None\n')):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(params); cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell]; nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder/f"{name}.ipynb")
    return folder


def test_resume_compares_each_stage_options(tmp_path, monkeypatch):
    "--resume re-runs a stage whose options changed (a dropped --param included), skips one whose options did not."
    import io
    from sarlang_nb import reproduce as R
    from sarlang_nb.core import update_config
    seen = []
    def fake_stage(nb, dst, base, kernel="python3", log_output=False):
        rd = RunDir(base["run_dir"])
        if nb.stem == "00_core": update_config(rd, base["profile"], data_root=base["data_root"], model_paths=base["model_paths"] or None, **base["overrides"])
        rd.write_manifest(nb.stem, []); seen.append((nb.stem, base.get("paper_values")))
    monkeypatch.setattr(R, "run_stage", fake_stage)
    nbs, run = _stand_in_stages(tmp_path/"nbs"), tmp_path/"run"
    go = lambda **kw: R.reproduce(run, nbs=nbs, out=io.StringIO(), **kw)
    assert go(params={"rule": "sign", "percentiles": (1, 99), "n_scenes": 50})["ran"] == ["00_core", "02_preprocess"]
    assert go(params={"rule": "sign", "percentiles": (1, 99), "n_scenes": 50}, resume=True)["ran"] == []   # a tuple is its list
    assert go(params={"percentiles": [1, 99]}, resume=True)["ran"] == ["02_preprocess"]   # rule dropped: back to "closest"
    assert go(params={"percentiles": [1, 99]}, resume=True)["ran"] == []
    assert go(resume=True, params={"percentiles": [1, 99], "enl": 1.0})["ran"] == []         # enl: a config key, config.json's
    # a relative path in a --param is made absolute (the stages run in another folder)
    (tmp_path/"t3.csv").write_text("dataset,modality,mean,variance\n")
    monkeypatch.chdir(tmp_path)
    go(params={"percentiles": [1, 99], "paper_values": "t3.csv"}, stages="02")
    assert seen[-1] == ("02_preprocess", str(tmp_path/"t3.csv"))


def test_resume_keeps_the_runs_data_root_and_model_paths(tmp_path, monkeypatch):
    "Omitting --data-root/--model-path on --resume keeps the run's; naming other ones is refused."
    import io
    from sarlang_nb import reproduce as R
    from sarlang_nb.core import update_config
    def fake_stage(nb, dst, base, kernel="python3", log_output=False):
        rd = RunDir(base["run_dir"])
        if nb.stem == "00_core": update_config(rd, base["profile"], data_root=base["data_root"], model_paths=base["model_paths"] or None, **base["overrides"])
        rd.write_manifest(nb.stem, [])
    monkeypatch.setattr(R, "run_stage", fake_stage)
    nbs, run = _stand_in_stages(tmp_path/"nbs"), tmp_path/"run"
    (tmp_path/"w").mkdir(); (tmp_path/"w2").mkdir()
    go = lambda **kw: R.reproduce(run, nbs=nbs, out=io.StringIO(), **kw)
    go(model_paths={"sentence-bert": tmp_path/"w"})
    assert go(resume=True)["skipped"] == ["00_core", "02_preprocess"]
    with pytest.raises(SarlangError, match="model_paths"): go(resume=True, model_paths={"sentence-bert": tmp_path/"w2"})
