"Tests of sarlang-reproduce (sarlang_nb.reproduce): what a killed or interrupted run leaves behind, incomplete stages, exit codes."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import nbformat, pytest
from conftest import stage_notebook as _nb, run_cli, BIN
from sarlang_nb.core import RunDir

LINUX = Path("/proc/self/stat").exists()

# The stage: the first time it starts a worker process, leaves a half-written atomic write open and hangs;
# the next time it completes.
HANG = '''
import os, sys, time, subprocess, json
from pathlib import Path
from sarlang_nb.core import RunDir, atomic_writer
rd = RunDir(run_dir)
if not (rd.path/"hung-once").exists():
    (rd.path/"hung-once").write_text("")
    w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    cm = atomic_writer(rd.metrics/"partial.json"); f = cm.__enter__(); f.write('{"accuracy": 0.'); f.flush()
    (rd.path/"pids.json").write_text(json.dumps({"kernel": os.getpid(), "worker": w.pid}))
    time.sleep(300)
(rd.metrics/"partial.json").write_text("{}")
rd.write_manifest("00_hang", [rd.metrics/"partial.json"])
'''

def _alive(pid):
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().rsplit(")", 1)[1].split()[0] == "Z")   # a zombie is dead

def _start(tmp_path):
    nbs = tmp_path/"nbs"; nbs.mkdir()
    _nb(nbs/"00_hang.ipynb", HANG)
    run = tmp_path/"run"
    p = subprocess.Popen([str(BIN/"sarlang-reproduce"), "--run-dir", str(run), "--notebooks", str(nbs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (run/"pids.json").exists(): break
        if p.poll() is not None: pytest.fail(p.stdout.read() + p.stderr.read())
        time.sleep(0.1)
    time.sleep(0.3)
    return p, nbs, run, json.loads((run/"pids.json").read_text())

def _wait_dead(pids, seconds=8):
    t = time.time()
    while time.time() - t < seconds and any(map(_alive, pids)): time.sleep(0.2)
    return [p for p in pids if _alive(p)]

@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_kill_9_leaves_no_process_and_resume_cleans_the_temporary_files(tmp_path):
    p, nbs, run, pids = _start(tmp_path)
    tmp = [f for f in (run/"metrics").iterdir() if f.name.startswith(".partial.json.")]
    assert len(tmp) == 1 and _alive(pids["kernel"]) and _alive(pids["worker"])
    p.send_signal(signal.SIGKILL); p.wait()
    left = _wait_dead([pids["kernel"], pids["worker"]])
    for q in left: os.kill(q, signal.SIGKILL)
    assert not left, f"processes left running after kill -9 of sarlang-reproduce: {left}"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("sarlang-kernel-*/owner.pid")) or all(
        int(o.read_text()) != p.pid for o in Path(os.environ.get("TMPDIR", "/tmp")).glob("sarlang-kernel-*/owner.pid"))
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--notebooks", nbs, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "half-written" in r.stdout and tmp[0].name in r.stdout
    assert not tmp[0].exists() and RunDir(run).stage_complete("00_hang")

@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_interrupt_exits_130_and_stops_the_kernel(tmp_path):
    p, nbs, run, pids = _start(tmp_path)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "sarlang-reproduce: interrupted" in err, (p.returncode, out, err)
    left = _wait_dead([pids["kernel"], pids["worker"]])
    for q in left: os.kill(q, signal.SIGKILL)
    assert not left

def test_stage_without_a_manifest_is_not_complete(tmp_path):
    "A stage run on an empty run folder that records nothing is not 'ok': exit 3, named, and --resume runs it again."
    nbs = tmp_path/"nbs"; nbs.mkdir()
    _nb(nbs/"00_nothing.ipynb", "x = 1")
    _nb(nbs/"01_fine.ipynb", "from sarlang_nb.core import RunDir\nRunDir(run_dir).write_manifest('01_fine', [])")
    run = tmp_path/"run"
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--notebooks", nbs)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "00_nothing  INCOMPLETE" in r.stdout and "01_fine     ok" in r.stdout and "00_nothing" in r.stderr
    assert json.loads((run/"manifests"/"reproduce.json").read_text())["incomplete"] == ["00_nothing"]
    assert not RunDir(run).stage_complete("00_nothing")
    r = run_cli("sarlang-reproduce", "--run-dir", run, "--notebooks", nbs, "--resume")
    assert r.returncode == 3 and "01_fine     skipped" in r.stdout and "00_nothing  INCOMPLETE" in r.stdout

def test_usage_errors_are_status_2_and_bad_input_1(tmp_path):
    r = run_cli("sarlang-reproduce", "--profile", "gpu")
    assert r.returncode == 2 and "invalid choice: 'gpu'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sarlang-reproduce", "--no-such-flag")
    assert r.returncode == 2
    r = run_cli("sarlang-reproduce", "--run-dir", tmp_path/"r", "--param", "oops")
    assert r.returncode == 1 and r.stderr.startswith("sarlang-reproduce: error: --param expects KEY=VALUE")
    r = run_cli("sarlang-reproduce", "--list")
    assert r.returncode == 0 and r.stdout.split()[:2] == ["00_core", "01_sario"]

def test_repeatable_flags_and_their_values_reach_reproduce(monkeypatch):
    "--model-path and --param are repeatable and parsed as before (the command is built from docments now)."
    from sarlang_nb import reproduce as R
    got = {}
    monkeypatch.setattr(R, "reproduce", lambda *a, **k: got.update(a=a) or {})
    assert R.main(["--param", "n_scenes=30", "--param", "rule=sign", "--model-path", "blip=/m/b", "--model-path", "qwen2-vl=/m/q",
                   "--stages", "02", "--resume", "--profile", "paper", "--data-root", "/d"]) == 0
    run_dir, profile, stages, data_root, model_paths, params, resume = got["a"][:7]
    assert (run_dir, profile, stages, data_root, resume) == ("runs/paper", "paper", "02", "/d", True)
    assert model_paths == {"blip": "/m/b", "qwen2-vl": "/m/q"} and params == {"n_scenes": 30, "rule": "sign"}
