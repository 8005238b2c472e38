"""SAR preprocessing (sarlang_nb.preprocess): refined Lee vs its definition and PolSARpro, log stretch, the batch CLI
with corrupt inputs, resume after a kill, workers."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from sarlang_nb.core import SarlangError, shared_data
from sarlang_nb.sario import write_geotiff, POLS
from sarlang_nb.preprocess import (refined_lee, refined_lee_reference, edge_direction, log_stretch, load_intensity,
                                   preprocess, preprocess_batch, run_pool, main, tie_explained, RULES, NOISES,
                                   OPTIONS_FILE)
from sarlang_nb import preprocess as P

os.environ["SARLANG_PROGRESS"] = "0"
torch.set_num_threads(1)
ENV = {**os.environ, "SARLANG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-c", "import sys; from sarlang_nb.preprocess import main; sys.exit(main())"]


# ------------------------------------------------------------------ refined Lee vs the definitions
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("seed,shape,enl", [(1, (23, 29), 1.0), (2, (8, 40), 3.0), (3, (1, 1), 1.0), (4, (2, 3), 1.0),
                                            (5, (7, 7), 0.5), (6, (31, 9), 10.0)])
def test_fast_equals_reference(rule, noise, seed, shape, enl):
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(shape) < 0.5, 1.0, rng.choice([0.1, 5.0, 30.0]))    # patchy scene
    img = truth * rng.gamma(enl, 1 / enl, shape)
    ref = refined_lee_reference(img, enl, rule, noise)
    np.testing.assert_allclose(refined_lee(img, enl, rule, noise), ref, rtol=1e-10, atol=1e-12 * ref.max())
    f32 = refined_lee(img.astype(np.float32), enl, rule, noise)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, ref, rtol=2e-5, atol=2e-6 * ref.max())


def test_quantised_image_with_ties_equals_reference():
    "8-bit data and mirrored borders create exact gradient ties: the tie rule must agree with the definition."
    rng = np.random.default_rng(7)
    g = rng.integers(0, 256, (20, 20)); g[:, 10:] = 255 - g[:, 10:] // 3
    img = ((g / 255.0) ** 2).astype(np.float32)
    for rule in RULES:
        np.testing.assert_allclose(refined_lee(img, rule=rule), refined_lee_reference(img, rule=rule), rtol=2e-5, atol=1e-7)


def test_batches_tiles_torch_and_devices():
    rng = np.random.default_rng(0)
    b = rng.gamma(1.0, 1.0, (3, 50, 37)).astype(np.float32)
    whole = refined_lee(b, rule="sign", noise="local")
    for i in range(3):
        np.testing.assert_array_equal(whole[i], refined_lee(b[i], rule="sign", noise="local"))
    for tile in (1, 7, 32, 10_000):
        np.testing.assert_array_equal(refined_lee(b, rule="sign", noise="local", tile=tile), whole)   # bit-identical
    t = refined_lee(torch.from_numpy(b), rule="sign", noise="local")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), whole)
    if torch.cuda.is_available():
        c = refined_lee(torch.from_numpy(b).cuda(), rule="sign", noise="local")
        assert c.is_cuda
        np.testing.assert_allclose(c.cpu().numpy(), whole, rtol=1e-5, atol=1e-6)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 1.0, (16, 16))
    for img in (np.zeros((10, 10)), np.full((10, 10), 7.0), x * 1e-300, x * 1e300, (x * 1e-40).astype(np.float32),
                (x * 1e35).astype(np.float32), np.eye(9), np.ones((1, 30)), np.ones((30, 1))):
        out = refined_lee(img)
        assert out.shape == img.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(refined_lee(np.full((10, 10), 7.0)), np.full((10, 10), 7.0))
    out = refined_lee(x)
    assert (out[0] != 0).all() and (out[:, -1] != 0).all()      # no zero ring at the border
    np.testing.assert_allclose(refined_lee(x * 1e-300) * 1e300, out, rtol=1e-9)      # scale-free


def test_bad_inputs():
    x = np.ones((12, 12), np.float32)
    x[0, 0] = np.nan; x[5, 5:7] = np.inf
    with pytest.raises(SarlangError, match="3 non-finite pixel value"): refined_lee(x)
    with pytest.raises(SarlangError, match="2 negative"): refined_lee(np.array([[1.0, -1.0], [-2.0, 1.0]]))
    with pytest.raises(SarlangError, match="rule must be"): refined_lee(np.ones((4, 4)), rule="dark")
    with pytest.raises(SarlangError, match="noise must be"): refined_lee(np.ones((4, 4)), noise="global")
    with pytest.raises(SarlangError, match="enl must be"): refined_lee(np.ones((4, 4)), enl=float("nan"))
    with pytest.raises(SarlangError, match="shape"): refined_lee(np.ones((2, 2, 2, 2)))
    with pytest.raises(SarlangError, match="empty"): refined_lee(np.ones((0, 4)))
    with pytest.raises(SarlangError, match="tile must be a positive"): refined_lee(np.ones((9, 9)), tile=-2)   # was uninitialised memory


def test_rules_on_step_edge():
    "sign takes the darker side everywhere; closest the pixel's own side."
    step = np.where(np.arange(30) < 15, 1.0, 8.0)[None].repeat(20, 0)
    assert edge_direction(step, "sign")[10, 12:18].tolist() == [4] * 6
    assert edge_direction(step, "closest")[10, 12:18].tolist() == [4, 4, 4, 0, 0, 0]
    # and so the bright side next to the edge stays bright with closest, is pulled down with sign
    assert refined_lee(step, rule="closest")[10, 15] == pytest.approx(8.0)
    assert refined_lee(step, rule="sign")[10, 15] < 5


def test_polsarpro_conformance():
    sd = shared_data()
    if sd is None or not (sd/"refined_lee_vectors").exists(): pytest.skip("../shared/data/refined_lee_vectors not found beside the checkout")
    x = np.load(sd/"refined_lee_vectors"/"input_P0094_512_intensity.npy")
    y = np.load(sd/"refined_lee_vectors"/"polsarpro_refined_lee_7x7_enl1.npy")
    ours = refined_lee(x, enl=1.0, rule="sign", noise="enl")
    rel = np.abs(ours - y)[3:-3, 3:-3] / np.maximum(np.abs(y[3:-3, 3:-3]), 1e-30)
    off = np.argwhere(rel > 1e-5) + 3
    assert len(off) <= 1e-3 * rel.size, f"{len(off)} interior pixels off by more than 1e-5"
    unexplained = [(i, j) for i, j in off if not tie_explained(x, y, i, j)]
    assert not unexplained, f"pixels off by > 1e-5 that are not exact gradient ties: {unexplained[:10]}"
    # the same on the GPU, when there is one
    if torch.cuda.is_available():
        g = refined_lee(torch.from_numpy(x).cuda(), rule="sign").cpu().numpy()
        assert (np.abs(g - ours)[3:-3, 3:-3] <= 1e-5 * np.abs(ours[3:-3, 3:-3]) + 1e-12).mean() > 0.999


# ------------------------------------------------------------------ log stretch and channel selection
def test_log_stretch():
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 1.0, (64, 64))
    u = log_stretch(x)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    assert 0.01 < (u == 255).mean() < 0.03 and 0.01 < (u == 0).mean() < 0.03      # the 2-98 % defaults
    np.testing.assert_array_equal(log_stretch(np.sqrt(x), "amplitude"), u)
    np.testing.assert_array_equal(log_stretch(x * 1e-20), u)                          # scale-free
    assert log_stretch(np.zeros((3, 3))).max() == 0
    assert set(np.unique(log_stretch(np.full((3, 3), 5.0)))) == {128}
    with pytest.raises(SarlangError, match="non-finite"): log_stretch(np.array([np.inf, 1.0]))
    with pytest.raises(SarlangError, match="negative"): log_stretch(np.array([-1.0, 1.0]))


def test_channel_selection(tmp_path):
    rng = np.random.default_rng(1)
    quad = rng.gamma(1.0, 1.0, (4, 20, 24)).astype(np.float32)
    write_geotiff(tmp_path/"q.tif", quad, bands=list(POLS))
    np.testing.assert_array_equal(load_intensity(tmp_path/"q.tif", "HV"), quad[1])
    np.testing.assert_array_equal(preprocess(tmp_path/"q.tif", "vh"), preprocess(quad[2]))
    with pytest.raises(SarlangError, match=r"no band 'RR'"): preprocess(tmp_path/"q.tif", "RR")
    g = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path/"chip.png")                  # SARDet-style R=G=B
    np.testing.assert_allclose(load_intensity(tmp_path/"chip.png"), (g / 255.0) ** 2, rtol=1e-6)
    np.testing.assert_array_equal(preprocess(tmp_path/"chip.png"), preprocess(g))
    write_geotiff(tmp_path/"one.tif", quad[0], bands=["HH"])
    np.testing.assert_array_equal(load_intensity(tmp_path/"one.tif", "VV"), quad[0])  # single band: used as it is


# ------------------------------------------------------------------ the batch command
def _folder(root, n_good=6, size=64):
    rng = np.random.default_rng(3)
    (root/"sub").mkdir(parents=True)
    for i in range(n_good):
        write_geotiff(root/f"g{i:03d}.tif", rng.gamma(1.0, 1.0, (size, size)).astype(np.float32), bands=["VV"])
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root/"sub"/"chip.jpg")
    (root/"truncated.png").write_bytes((root/"sub"/"chip.jpg").read_bytes()[:0] + b"\x89PNG\r\n\x1a\n\x00\x00")
    (root/"empty.tif").write_bytes(b"")
    write_geotiff(root/"nan.tif", np.full((16, 16), np.nan, np.float32), bands=["VV"])
    bad = rng.gamma(1.0, 1.0, (16, 16)).astype(np.float32); bad[0, :3] = -1
    write_geotiff(root/"neg.tif", bad, bands=["VV"])
    jpg = (root/"sub"/"chip.jpg").read_bytes(); (root/"sub"/"half.jpg").write_bytes(jpg[: len(jpg) // 3])
    return n_good + 1, {"truncated.png", "empty.tif", "nan.tif", "neg.tif", "half.jpg"}


def test_mixed_folder_cli(tmp_path):
    n_good, bad = _folder(tmp_path/"in")
    out = tmp_path/"out"
    assert main([str(tmp_path/"in"), "--out", str(out), "--quiet"]) == 3          # some failed, the rest written
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(pngs) == n_good and "sub/chip.png" in pngs
    rep = json.loads((out/"preprocess_report.json").read_text())
    assert rep["written"] == n_good and {Path(f["path"]).name for f in rep["failed"]} == bad
    assert all(Path(f["path"]).name in f["error"] for f in rep["failed"])          # every error names its file
    # re-run: nothing redone, files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main([str(tmp_path/"in"), "--out", str(out), "--quiet"]) == 3
    rep = json.loads((out/"preprocess_report.json").read_text())
    assert (rep["written"], rep["skipped"]) == (0, n_good)
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # different options into the same folder: refused (exit 1, as sarlang-synth refuses another world) unless --overwrite
    assert main([str(tmp_path/"in"), "--out", str(out), "--quiet", "--rule", "sign"]) == 1
    assert main([str(tmp_path/"in"), "--out", str(out), "--quiet", "--rule", "sign", "--overwrite"]) == 3
    assert json.loads((out/OPTIONS_FILE).read_text())["rule"] == "sign"
    # exit statuses
    assert main([str(tmp_path/"in"/"nan.tif"), "--out", str(tmp_path/"o2"), "--quiet"]) == 1     # nothing succeeded
    assert main([str(tmp_path/"nope"), "--out", str(tmp_path/"o3")]) == 1          # a missing input: bad input, as everywhere
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"o3"), "--rule", "darkest"]) == 2
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"o3"), "--percentiles", "90", "10"]) == 1      # a bad value: 1, as in every command
    if not torch.cuda.is_available():
        assert main([str(tmp_path/"in"), "--out", str(tmp_path/"o3"), "--device", "cuda"]) == 1
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"o3"), "--workers", "0"]) == 2          # rejected by the parser: usage


def test_outputs_inside_source_are_not_inputs(tmp_path):
    _folder(tmp_path/"in", n_good=2, size=24)
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"in"/"png"), "--quiet"]) == 3      # the folder's bad files fail
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"in"/"png"), "--quiet"]) == 3
    assert not (tmp_path/"in"/"png"/"png").exists()


def test_workers_match_single_process(tmp_path):
    _folder(tmp_path/"in", n_good=4, size=48)
    r1 = preprocess_batch([tmp_path/"in"], tmp_path/"o1", workers=1)
    r2 = preprocess_batch([tmp_path/"in"], tmp_path/"o2", workers=2)
    assert r1["written"] == r2["written"] == 5 and len(r1["failed"]) == len(r2["failed"]) == 5
    for p in (tmp_path/"o1").rglob("*.png"):
        assert p.read_bytes() == (tmp_path/"o2"/p.relative_to(tmp_path/"o1")).read_bytes()


def test_kill_and_resume(tmp_path):
    "SIGKILL the command mid-batch: every PNG left is complete, and the re-run only does the rest."
    rng = np.random.default_rng(4)
    src = tmp_path/"in"; src.mkdir()
    n = 40
    for i in range(n):
        write_geotiff(src/f"s{i:03d}.tif", rng.gamma(1.0, 1.0, (192, 192)).astype(np.float32), bands=["VV"])
    out = tmp_path/"out"; out.mkdir()
    (out/".s000.png.stale.tmp").write_bytes(b"left by a killed write")
    proc = subprocess.Popen(CLI + [str(src), "--out", str(out), "--quiet"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 90 and proc.poll() is None and len(list(out.glob("s*.png"))) < 3: time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done = sorted(out.glob("s*.png"))
    assert done, "no output was written before the kill"
    for p in done: Image.open(p).load()                                  # complete PNGs only
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    r = subprocess.run(CLI + [str(src), "--out", str(out), "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out/"preprocess_report.json").read_text())
    assert rep["skipped"] == len(done) and rep["written"] == n - len(done) and not rep["failed"]
    assert mtimes == {p: p.stat().st_mtime_ns for p in done}              # finished work was not redone
    assert len(list(out.glob("s*.png"))) == n and not list(out.glob(".*.tmp"))


def test_thread_count_gives_same_bits_and_is_restored():
    "Same bits whatever torch's thread setting, and the setting is restored after the call."
    x = np.random.default_rng(9).gamma(1.0, 1.0, (300, 260)).astype(np.float32)
    one = refined_lee(x, tile=64)
    try:
        torch.set_num_threads(2)
        two = refined_lee(x, tile=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(one, two)


def test_interrupted_change_of_options_never_mixes_settings(tmp_path, monkeypatch):
    "Killed while redoing a folder with new options: the next run may not keep the outputs of the old options."
    import sarlang_nb.preprocess as pp
    rng = np.random.default_rng(7)
    src = tmp_path/"in"; src.mkdir()
    for i in range(4): write_geotiff(src/f"s{i}.tif", rng.gamma(1.0, 1.0, (24, 24)).astype(np.float32), bands=["VV"])
    out = tmp_path/"out"
    assert preprocess_batch([src], out, rule="closest")["written"] == 4
    real, calls = pp.preprocess_file, []
    def killed_after_one(s, d, **o):
        if calls: raise KeyboardInterrupt("killed")
        calls.append(s); return real(s, d, **o)
    monkeypatch.setattr(pp, "preprocess_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt): preprocess_batch([src], out, rule="sign", overwrite=True)
    monkeypatch.setattr(pp, "preprocess_file", real)
    # resuming with the new options must not skip the three outputs still made with the old ones
    with pytest.raises(SarlangError, match="interrupted change"): preprocess_batch([src], out, rule="sign")
    with pytest.raises(SarlangError, match="interrupted change"): preprocess_batch([src], out, rule="closest")
    rep = preprocess_batch([src], out, rule="sign", redo_on_change=True)
    assert (rep["written"], rep["skipped"]) == (4, 0)
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(out/f"s{i}.png")), preprocess(src/f"s{i}.tif", rule="sign"))
    assert preprocess_batch([src], out, rule="sign")["skipped"] == 4                # a finished change resumes normally


def test_same_file_named_twice_is_done_once(tmp_path):
    "A folder and a file inside it: the file is one input, not a collision with itself."
    src = tmp_path/"in"; src.mkdir()
    write_geotiff(src/"a.tif", np.random.default_rng(0).gamma(1.0, 1.0, (16, 16)).astype(np.float32), bands=["VV"])
    write_geotiff(tmp_path/"a.tif", np.ones((16, 16), np.float32), bands=["VV"])      # another file, same output name
    rep = preprocess_batch([src, src/"a.tif", tmp_path/"a.tif"], tmp_path/"out")
    assert rep["written"] == 1 and [f["path"] for f in rep["failed"]] == [str(tmp_path/"a.tif")]
    assert "collides" in rep["failed"][0]["error"]


def _die_on_5(job):
    "A job function for `run_pool`: job 5 kills its own worker process, as the OOM killer would."
    if job == 5: os.kill(os.getpid(), signal.SIGKILL)
    return job * 10


def test_run_pool_reports_only_the_job_that_kills_its_worker():
    results = []
    deaths = run_pool(_die_on_5, range(12), 2, results.append, died=lambda j: ("died", j))
    assert sorted(r for r in results if not isinstance(r, tuple)) == [j * 10 for j in range(12) if j != 5]
    assert [r for r in results if isinstance(r, tuple)] == [("died", 5)]      # every job reported exactly once
    assert len(results) == 12 and deaths >= 2                                  # the pool broke, then job 5 alone broke it


def test_batch_survives_a_killed_worker(tmp_path):
    "A worker SIGKILLed mid-batch (here from outside, once) costs nothing: every file is written, the death is reported."
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(5)
    src = tmp_path/"in"; src.mkdir()
    for i in range(16): write_geotiff(src/f"s{i:02d}.tif", rng.gamma(1.0, 1.0, (768, 768)).astype(np.float32), bands=["VV"])
    out, rep = tmp_path/"out", {}
    th = threading.Thread(target=lambda: rep.update(preprocess_batch([src], out, workers=2, show_progress=False)))
    th.start()
    me, killed, t0 = psutil.Process(), None, time.time()
    while killed is None and th.is_alive() and time.time() - t0 < 120:
        for p in me.children(recursive=True):                         # pool workers are children of the forkserver
            try:
                if p.ppid() != me.pid and "forkserver" in " ".join(p.cmdline()) and len(list(out.glob("*.png"))) >= 1:
                    p.kill(); killed = p.pid; break
            except psutil.Error: pass
        time.sleep(0.02)
    th.join(300)
    assert killed is not None, "the batch ended before a worker could be killed"
    assert rep["failed"] == [] and rep["written"] == 16 and rep["worker_deaths"] >= 1
    assert sorted(p.name for p in out.glob("*.png")) == [f"s{i:02d}.png" for i in range(16)]
    assert json.loads((out/"preprocess_report.json").read_text())["worker_deaths"] == rep["worker_deaths"]


def test_bad_device_report_and_options_file_are_argument_errors(tmp_path):
    "Exit 1 (bad input, as in every command) with one line for a device that is not one, a --report that is a folder, an --out that is a file; a damaged options file asks for --overwrite."
    _folder(tmp_path/"in", n_good=2, size=24)
    (tmp_path/"afile").write_text("x")
    for extra, msg in ((["--device", "gpu"], "is not a torch device"), (["--report", str(tmp_path)], "--report is a folder"),
                       ([], "--out is a file")):
        out = tmp_path/"afile" if msg == "--out is a file" else tmp_path/"o"
        r = subprocess.run(CLI + [str(tmp_path/"in"), "--out", str(out), "--quiet", *extra], env=ENV, capture_output=True, text=True)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path/"o2").mkdir(); (tmp_path/"o2"/OPTIONS_FILE).write_text("")
    with pytest.raises(SarlangError, match="unreadable.*--overwrite"): preprocess_batch([tmp_path/"in"], tmp_path/"o2")
    assert preprocess_batch([tmp_path/"in"], tmp_path/"o2", overwrite=True)["written"] == 3     # 2 GeoTIFFs and the JPEG


# ------------------------------------------------------------------ issue 17: ESA SNAP's refined Lee, threads
def real_chips():
    sd = shared_data()
    d = sd/"real_sar_det"/"images" if sd else None
    if d is None or not d.is_dir(): pytest.skip("../shared/data/real_sar_det not found beside the checkout")
    return sorted(d.glob("*"))

@pytest.mark.parametrize("k", range(6))
def test_snap_equals_the_port_of_snaps_loops_on_real_chips(k):
    chips = real_chips()
    f = chips[(k * 7) % len(chips)]
    g = load_intensity(f)
    crops = [g[300:364, 280:344]] + ([g[:40, -40:]] if k % 2 else [g[-40:, :40]])   # an interior crop and an image corner
    for c in crops:
        ref = P.refined_lee_snap_reference(c)
        out = refined_lee(c, rule="snap")
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(refined_lee(c.astype(np.float64), rule="snap"), ref, rtol=1e-12, atol=0)
    c = crops[0]
    if k < 2:   # the 2014 edge-threshold branch (a threshold inside the range of the window variances) and nodata=None
        thr = float(np.quantile(np.asarray(c, np.float64), 0.6) ** 2) * 0.31
        for t, nd in ((thr, 0.0), (None, None)):
            np.testing.assert_allclose(refined_lee(c.astype(np.float64), rule="snap", edge_threshold=t, nodata=nd),
                                       P.refined_lee_snap_reference(c, t, nd), rtol=1e-12, atol=0)

def test_snap_on_the_conformance_input():
    sd = shared_data()
    if sd is None or not (sd/"refined_lee_vectors").is_dir(): pytest.skip("../shared/data/refined_lee_vectors not found")
    x = np.load(sd/"refined_lee_vectors"/"input_P0094_512_intensity.npy")
    for c in (x[:72, :72], x[220:300, 200:280]):
        np.testing.assert_allclose(refined_lee(c, rule="snap"), P.refined_lee_snap_reference(c), rtol=1e-6, atol=1e-12)

def test_snap_quirks():
    "The turns of SNAP's code that Lee's rule does not take: each visible on a small image."
    flat = np.full((9, 9), 3.0)
    out = refined_lee(flat, rule="snap")
    assert out[4, 4] == 0.0 and out[0, 0] == 3.0        # a flat half-window returns 0.0; the border path returns the mean
    z = np.random.default_rng(0).gamma(1.0, 1.0, (15, 15)); z[7, 7] = 0.0
    out = refined_lee(z, rule="snap")
    assert out[7, 7] == 0.0                             # a zero pixel is no-data (SNAP's default no-data value)
    np.testing.assert_allclose(out[7, 9], P.refined_lee_snap_reference(z)[7, 9])
    assert refined_lee(z, rule="snap", nodata=None)[7, 7] > 0   # unless no value is no-data
    # the noise estimate ignores the bottom-right sub-area when all nine are valid: changing only its variance
    # (a pixel of it outside every other sub-area and outside the chosen half-window) changes nothing
    w = 1.0 + 0.05 * np.random.default_rng(1).random((7, 7)); w[:, :4] *= 5; w[2:5, :4] *= 2   # SNAP takes the left half here
    w[4:, 4:] = 1.0 + 0.001 * np.arange(9).reshape(3, 3)                      # the bottom-right sub-area: the smallest var/mean^2
    w2 = w.copy(); w2[6, 6] *= 1.05
    lee9 = lambda a: refined_lee(a, rule="closest", noise="local")[3, 3]       # the estimate over all nine sees the change
    assert lee9(w) != lee9(w2)
    assert refined_lee(w, rule="snap")[3, 3] == refined_lee(w2, rule="snap")[3, 3]
    assert P.refined_lee_snap_reference(w)[3, 3] == P.refined_lee_snap_reference(w2)[3, 3]

def test_snap_arguments():
    with pytest.raises(SarlangError, match="edge_threshold"): refined_lee(np.ones((9, 9)), rule="snap", edge_threshold=-1)
    with pytest.raises(SarlangError, match="edge_direction covers"): edge_direction(np.ones((9, 9)), "snap")
    np.testing.assert_array_equal(refined_lee_reference(np.ones((9, 9)) * 2, rule="snap"), P.refined_lee_snap_reference(np.ones((9, 9)) * 2))

def test_default_is_one_thread_and_callers_setting_restored(monkeypatch):
    "On CPU refined_lee runs on one intra-op thread unless asked (oversubscribed cores cost 5-8x); torch's setting is restored."
    seen = []
    real = P._core
    def spy(*a, **k):
        seen.append(torch.get_num_threads()); return real(*a, **k)
    monkeypatch.setattr(P, "_core", spy)
    x = np.random.default_rng(2).gamma(1.0, 1.0, (64, 64)).astype(np.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        refined_lee(x); refined_lee(x, threads=2)
        assert torch.get_num_threads() == 2
    finally: torch.set_num_threads(old)
    assert seen == [1, 2]
    with pytest.raises(SarlangError, match="threads must be"): refined_lee(x, threads=0)


def test_exit_status_partial_failure_is_3_everywhere(tmp_path):
    "The same condition, the same code as in the other commands: some failed, the rest written -> 3; all done -> 0."
    (tmp_path/"in").mkdir()
    write_geotiff(tmp_path/"in"/"ok.tif", np.ones((16, 16), np.float32))
    (tmp_path/"in"/"bad.png").write_bytes(b"not a png")
    assert main([str(tmp_path/"in"), "--out", str(tmp_path/"o"), "--quiet"]) == 3
    assert main([str(tmp_path/"in"/"ok.tif"), "--out", str(tmp_path/"o2"), "--quiet"]) == 0
    assert main([str(tmp_path/"in"/"missing.tif"), "--out", str(tmp_path/"o3"), "--quiet"]) == 1

def test_stored_db_option(tmp_path):
    db = np.full((16, 16), -10.0, np.float32)                         # -10 dB = 0.1
    write_geotiff(tmp_path/"db.tif", db, domain="intensity")           # metadata says intensity: negative values refused...
    assert main([str(tmp_path/"db.tif"), "--out", str(tmp_path/"o"), "--quiet"]) == 1
    rep = json.loads((tmp_path/"o"/"preprocess_report.json").read_text())
    assert "stored='db'" in rep["failed"][0]["error"] and "--stored db" in rep["failed"][0]["error"]
    assert main([str(tmp_path/"db.tif"), "--out", str(tmp_path/"o2"), "--quiet", "--stored", "db"]) == 0   # ...unless told
    np.testing.assert_allclose(load_intensity(tmp_path/"db.tif", stored="db"), 0.1, rtol=1e-6)

def _marked(marker):
    "Pids of live processes whose environment holds `marker` (ours: the test put it there)."
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            if marker.encode() in (d/"environ").read_bytes() and (d/"stat").read_text().split()[2] != "Z": out.append(int(d.name))
        except OSError: pass
    return out

@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("reap", [True, False], ids=["parent-reaped", "parent-not-reaped"])
def test_workers_end_when_the_command_is_killed(tmp_path, reap):
    """kill -9 of `sarlang-preprocess --workers 2`: its worker processes end too and stop writing, whether or not whoever
    started the command has reaped it yet (a killed process stays a zombie until then); the next run leaves no temporary file."""
    rng = np.random.default_rng(8)
    src = tmp_path/"in"; (src/"a").mkdir(parents=True)
    for i in range(60): write_geotiff(src/f"s{i:03d}.tif", rng.gamma(1.0, 1.0, (256, 256)).astype(np.float32), bands=["VV"])
    write_geotiff(src/"a"/"t.tif", rng.gamma(1.0, 1.0, (32, 32)).astype(np.float32), bands=["VV"])
    out = tmp_path/"out"
    marker = f"SARLANG_TEST_MARK={os.getpid()}_{time.time_ns()}"
    k, v = marker.split("=")
    proc = subprocess.Popen(CLI + [str(src), "--out", str(out), "--quiet", "--workers", "2"], env={**ENV, k: v},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and proc.poll() is None and len(list(out.glob("s*.png"))) < 4: time.sleep(0.02)
        assert proc.poll() is None, "the batch ended before it could be killed"
        assert len([p for p in _marked(marker) if p != proc.pid]) >= 2          # the workers (and the forkserver) run
        os.kill(proc.pid, signal.SIGKILL)
        if reap: proc.wait()
        time.sleep(2.0)
        left = _marked(marker)                                                  # (a zombie is not alive)
        n = len(list(out.glob("s*.png")))
        time.sleep(1.0)
        assert left == [] and len(list(out.glob("s*.png"))) == n, f"processes {left} outlived the command"
    finally:
        proc.wait()
        for pid in _marked(marker):
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
    # what a kill leaves: temporary files of atomic writes, of PNGs (a worker ended mid-write) and of the JSON records,
    # also in folders whose outputs are all done (a/ is finished first)
    assert (out/"a"/"t.png").exists()
    for f in (out/".s059.png.k1ll3d.tmp", out/"a"/".t.png.k1ll3d.tmp", out/f".{OPTIONS_FILE}.k1ll3d.tmp",
              out/".preprocess_report.json.k1ll3d.tmp"): f.write_bytes(b"left by a killed write")
    r = subprocess.run(CLI + [str(src), "--out", str(out), "--quiet", "--workers", "2"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list(out.rglob("*.png"))) == 61 and sorted(p.name for p in out.rglob("*.tmp")) == []


# ------------------------------------------------------------------ issue 12/17: the command from docments, hints that exist
def test_cli_help_keeps_the_flags(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--pol", "--rule", "--enl", "--noise", "--stored", "--percentiles", "--workers", "--device",
                 "--overwrite", "--report", "--quiet"): assert flag in out, flag


def _hints(mod):
    "(flags, Python argument names) that `mod`'s source names in its messages."
    import inspect, re
    s = inspect.getsource(mod)
    py = {n for h in re.findall(r"Python: ([^)]*)\)", s) for n in (re.findall(r"(\w+)=", h) or [h.strip()])}
    py |= set(re.findall(r"read_raster\(\.\.\., (\w+)=", s))
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", s)), py


@pytest.mark.parametrize("modname", ["sarlang_nb.preprocess", "sarlang_nb.sario"])
def test_hints_name_options_that_exist(modname):
    "Every --flag the messages name is a flag of sarlang-preprocess; every `(Python: arg=)` an argument of the module's functions."
    import importlib, inspect
    from fastcore.script import anno_parser
    mod = importlib.import_module(modname)
    flags = {o for a in anno_parser(P.preprocess_cmd)._actions for o in a.option_strings}
    args = {p for f in vars(mod).values() if inspect.isfunction(f) for p in inspect.signature(f).parameters}
    named_flags, named_args = _hints(mod)
    assert named_flags and named_flags <= flags, named_flags - flags
    assert named_args <= args, named_args - args


def test_run_stage_preprocesses_the_runs_world(tmp_path):
    "Stage 02's entry point: the world's raw GeoTIFFs -> SARimages/<id>.png, as `preprocess` makes them; resumes; new options redo."
    from sarlang_nb.core import open_run
    from sarlang_nb import synthetic
    rd = open_run(tmp_path/"run", "smoke", n_scenes=4, scene_size=128, seed=1)
    synthetic.run_stage(rd, show_progress=False)               # what rd.require("03_synthetic") would run first
    rep = P.run_stage(rd)
    assert (rep["n_images"], rep["written"]) == (4, 4) and rd.stage_complete("02_preprocess")
    for s in synthetic.load_scenes(rd):
        assert np.array_equal(np.asarray(Image.open(rd.path/s["files"]["sar"])), preprocess(rd.path/s["files"]["sar_raw"]))
    assert P.run_stage(rd)["skipped"] == 4                                  # resumed
    assert P.run_stage(rd, rule="sign")["written"] == 4                     # other options: all redone (redo_on_change)
    assert rd.manifest("02_preprocess")["options"]["rule"] == "sign"
