"Tests of the synthetic SAR world (03_synthetic): determinism, speckle statistics, boxes, classes, CLI, run-dir contract."
import hashlib, json
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from sarlang_nb import synthetic as syn
from sarlang_nb.core import SarlangError, open_run
from sarlang_nb.sario import read_sar, read_raster


def digest(root):
    "{relative path: sha256} of every file under `root`."
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world30(tmp_path_factory):
    "A default 30-scene world (the smallest for which every class is promised)."
    out = tmp_path_factory.mktemp("w30")
    syn.build_world(out, n_scenes=30, seed=11, show_progress=False)
    return out


# --------------------------------------------------------------------------- determinism
def test_same_arguments_same_bytes_anywhere(tmp_path, cli):
    args = ["--n-scenes", "8", "--seed", "5", "--size", "128", "--enl", "2", "--quad-pol", "--quiet"]
    r1 = cli("sarlang-synth", "--out", tmp_path/"a", *args)
    assert r1.returncode == 0, r1.stderr
    r2 = cli("sarlang-synth", "--out", "b", *args, cwd=tmp_path/"a")   # a relative folder, elsewhere
    assert r2.returncode == 0, r2.stderr
    syn.build_world(tmp_path/"c"/"d", n_scenes=8, seed=5, size=128, enl=2, quad_pol=True, show_progress=False)
    da = {k: v for k, v in digest(tmp_path/"a").items() if not k.startswith("b/")}
    assert len(da) > 8*4 and da == digest(tmp_path/"a"/"b")
    assert {k: v for k, v in da.items() if k != "config.json"} == digest(tmp_path/"c"/"d")
    for f in ("world/scenes.jsonl", "world/world.json", "detection/Annotations/train.json", "config.json"):
        assert str(tmp_path) not in (tmp_path/"a"/f).read_text()     # no absolute paths inside files


def test_different_seed_differs(tmp_path):
    syn.build_world(tmp_path/"a", n_scenes=6, seed=1, size=128, show_progress=False)
    syn.build_world(tmp_path/"b", n_scenes=6, seed=2, size=128, show_progress=False)
    da, db = digest(tmp_path/"a"), digest(tmp_path/"b")
    assert (tmp_path/"a"/"world/scenes.jsonl").read_bytes() != (tmp_path/"b"/"world/scenes.jsonl").read_bytes()
    assert da["SARimages/raw/0000001.tif"] != db["SARimages/raw/0000001.tif"]


# --------------------------------------------------------------------------- radiometry
def _homogeneous_pixels(root, s):
    "Intensity (VV) of the largest homogeneous land cover of scene `s`, away from every target box (or None)."
    lc = np.asarray(Image.open(root/s["files"]["landcover_map"]))
    keep = np.ones(lc.shape, bool)
    for o in s["objects"]:
        x, y, w, h = o["bbox"]; keep[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = False
    best = max(((lc == syn.LC[c]) & keep for c in ("water", "bare", "road", "apron")), key=np.sum)
    if best.sum() < 8000: return None
    return read_sar(root/s["files"]["sar_raw"], pol="VV")[best]


@pytest.mark.parametrize("enl", [1.0, 4.0])
def test_enl_estimate_within_10_percent(tmp_path, enl):
    syn.build_world(tmp_path, n_scenes=12, seed=3, enl=enl, show_progress=False)
    est = [syn.estimate_enl(px) for s in syn.load_scenes(tmp_path) if (px := _homogeneous_pixels(tmp_path, s)) is not None]
    assert len(est) >= 6
    for e in est: assert abs(e - enl) <= 0.1*enl, (est, enl)
    # and on a homogeneous square patch of an open-sea scene (64 x 64 = 4096 pixels)
    rng = np.random.default_rng(0)
    patch = 0.004*rng.gamma(enl, 1/enl, (64, 64))
    assert abs(syn.estimate_enl(patch) - enl) <= 0.1*enl


def test_targets_brighter_than_background(world30):
    for s in syn.load_scenes(world30)[:10]:
        vv = read_sar(world30/s["files"]["sar_raw"], pol="VV")
        med = np.median(vv)
        for o in s["objects"]:
            x, y, w, h = o["bbox"]
            assert vv[y:y + h, x:x + w].max() > 4*med, (s["id"], o)


def test_quad_pol_bands_and_ratios(tmp_path):
    syn.build_world(tmp_path, n_scenes=6, seed=2, size=192, enl=3, quad_pol=True, show_progress=False)
    scenes = syn.load_scenes(tmp_path)
    r = read_raster(tmp_path/scenes[0]["files"]["sar_raw"])
    assert r.bands == ["HH", "HV", "VH", "VV"] and r.data.dtype == np.float32
    s = max(scenes, key=lambda s: s["landcover"].get("water", 0))
    lc = np.asarray(Image.open(tmp_path/s["files"]["landcover_map"])) == syn.LC["water"]
    for o in s["objects"]:
        x, y, w, h = o["bbox"]; lc[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = False
    q = read_raster(tmp_path/s["files"]["sar_raw"])
    hh, hv, vh, vv = (q.band(b)[lc].mean() for b in ("HH", "HV", "VH", "VV"))
    assert hh < vv and abs(hh/vv - syn.POL_RATIO["water"][0]) < 0.05
    assert abs(hv/vv - syn.POL_RATIO["water"][1]) < 0.005 and abs(vh/hv - 1) < 0.1


# --------------------------------------------------------------------------- boxes, classes, layout
def test_boxes_inside_images_and_apart(world30):
    for s in syn.load_scenes(world30):
        H, W = s["size"]
        boxes = [o["bbox"] for o in s["objects"]]
        for x, y, w, h in boxes:
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= W and y + h <= H
        for i, a in enumerate(boxes):
            assert syn._boxes_clear(a, boxes[i + 1:], gap=1), (s["id"], a)


def test_all_classes_present_from_30_scenes(world30):
    scenes = syn.load_scenes(world30)
    assert {o["category"] for s in scenes for o in s["objects"]} == set(syn.CLASSES)
    for split in ("train", "test"):
        coco = json.loads((world30/"detection/Annotations"/f"{split}.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        assert [c["name"] for c in coco["categories"]] == list(syn.CLASSES)
        assert {names[a["category_id"]] for a in coco["annotations"]} == set(syn.CLASSES), split
    # the promise (30) holds for every world size from 18 up, whatever the seed (the plan decides it)
    for n in range(18, 80, 5):
        for seed in range(3):
            plan = syn.plan_world(n, seed)
            for split in ("train", "test"):
                assert {p["primary"] for p in plan if p["source"] == "sardet" and p["split"] == split} == set(syn.CLASSES)


def test_layout_matches_contract(world30):
    scenes = syn.load_scenes(world30)
    assert [s["id"] for s in scenes] == [f"{i:07d}" for i in range(1, 31)]
    for s in scenes:
        assert set(s) >= {"id", "split", "source", "size", "landcover", "objects", "rgb_colours"}
        assert s["split"] in ("train", "test") and s["source"] in ("sardet", "paired")
        assert abs(sum(s["landcover"].values()) - 1) < 0.01 and set(s["rgb_colours"]) == set(s["landcover"])
        for o in s["objects"]: assert set(o) >= {"category", "bbox", "heading", "colour"} and 0 <= o["heading"] < 360
        assert (world30/f"SARimages/raw/{s['id']}.tif").is_file() and (world30/f"SARimages/raw/{s['id']}.png").is_file()
        assert (world30/f"RGBimages/{s['id']}.png").is_file() == (s["source"] == "paired")
        jpg = world30/f"detection/JPEGImages/{s['split']}/{s['id']}.jpg"
        assert jpg.is_file() == (s["source"] == "sardet")
        if jpg.is_file(): assert Image.open(jpg).size == tuple(s["size"][::-1])
    rgb = Image.open(world30/next(s for s in scenes if s["source"] == "paired")["files"]["rgb"])
    assert rgb.mode == "RGB" and rgb.size == (256, 256)
    coco_ids = {im["id"] for sp in ("train", "test")
                for im in json.loads((world30/"detection/Annotations"/f"{sp}.json").read_text())["images"]}
    assert coco_ids == {int(s["id"]) for s in scenes if s["source"] == "sardet"}


def test_category_order_matches_real_sardet_sample(shared_data, world30):
    real = json.loads((shared_data/"real_sar_det"/"annotations_coco.json").read_text())
    ours = json.loads((world30/"detection/Annotations/train.json").read_text())
    by_id = lambda c: [x["name"] for x in sorted(c["categories"], key=lambda x: x["id"])]
    assert by_id(ours) == by_id(real)


# --------------------------------------------------------------------------- run directory contract
def test_ensure_world_once_then_fast(tmp_path):
    rd = open_run(tmp_path/"run", "smoke", n_scenes=8, scene_size=128, seed=4)
    info = syn.ensure_world(rd, show_progress=False)
    assert info["params"]["n_scenes"] == 8 and (rd.path/"world/world.json").is_file()
    tif = rd.path/"SARimages/raw/0000001.tif"; mtime = tif.stat().st_mtime_ns
    assert syn.ensure_world(rd) == info and tif.stat().st_mtime_ns == mtime    # not rebuilt
    assert len(syn.load_scenes(rd)) == 8 and len(syn.load_scenes(rd.path)) == 8
    (rd.path/"SARimages/raw/0000002.png").unlink()                              # a file went missing: rebuilt
    syn.ensure_world(rd)
    assert (rd.path/"SARimages/raw/0000002.png").is_file() and tif.stat().st_mtime_ns != mtime
    cfg = json.loads(rd.config_file.read_text()); cfg["n_scenes"] = 9; rd.config_file.write_text(json.dumps(cfg))
    with pytest.raises(SarlangError, match="holds a different synthetic world"): syn.ensure_world(rd)


def test_ensure_world_errors(tmp_path):
    with pytest.raises(SarlangError, match="no complete synthetic world here"): syn.load_scenes(tmp_path)
    with pytest.raises(SarlangError, match="has no config.json"): syn.ensure_world(tmp_path/"bare")
    rd = open_run(tmp_path/"paper", "paper")
    with pytest.raises(SarlangError, match="paper profile"): syn.ensure_world(rd)


def test_interrupted_build_leaves_no_world_and_is_cleaned(tmp_path, monkeypatch):
    real, calls = syn.generate_scene, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) > 5: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(syn, "generate_scene", flaky)
    with pytest.raises(KeyboardInterrupt): syn.build_world(tmp_path, n_scenes=10, seed=0, size=128, show_progress=False)
    monkeypatch.setattr(syn, "generate_scene", real)
    with pytest.raises(SarlangError): syn.load_scenes(tmp_path)
    assert len(list((tmp_path/"SARimages/raw").glob("*.tif"))) == 5
    syn.build_world(tmp_path, n_scenes=3, seed=0, size=128, show_progress=False)    # a different world: nothing stale stays
    assert sorted(p.name for p in (tmp_path/"SARimages/raw").glob("*.tif")) == ["0000001.tif", "0000002.tif", "0000003.tif"]


# --------------------------------------------------------------------------- command line
def test_cli_help(cli):
    r = cli("sarlang-synth", "--help")
    assert r.returncode == 0
    for flag in ("--out", "--n-scenes", "--seed", "--size", "--enl", "--quad-pol", "--class-balance"): assert flag in r.stdout


def test_cli_run_and_overwrite(tmp_path, cli):
    r = cli("sarlang-synth", "--out", tmp_path, "--n-scenes", "7", "--size", "128", "--class-balance", "ship=3,car=0")
    assert r.returncode == 0, r.stderr
    assert "wrote 7 scenes" in r.stdout
    scenes = syn.load_scenes(tmp_path)
    assert {s["primary"] for s in scenes} <= set(syn.CLASSES) - {"car"}
    r = cli("sarlang-synth", "--out", tmp_path, "--n-scenes", "4", "--size", "128")
    assert r.returncode == 1 and "holds a different synthetic world (n_scenes=7" in r.stderr and "--overwrite" in r.stderr
    r = cli("sarlang-synth", "--out", tmp_path, "--n-scenes", "4", "--size", "128", "--overwrite", "--quiet")
    assert r.returncode == 0 and "names another world" in r.stderr, r.stderr     # the config.json of the first run
    assert len(syn.load_scenes(tmp_path)) == 4 and len(list((tmp_path/"SARimages/raw").glob("*.tif"))) == 4


@pytest.mark.parametrize("args,rc,msg", [
    (["--n-scenes", "0"], 1, "n_scenes must be a positive integer"),
    (["--enl", "0.5"], 1, "enl (equivalent number of looks) must be a number >= 1"),
    (["--enl", "nan"], 1, "enl (equivalent number of looks)"),
    (["--size", "64"], 1, "size must be an integer from 128 to 4096"),
    (["--seed", "-1"], 1, "seed must be a non-negative integer"),
    (["--class-balance", "boat=1"], 1, "unknown class(es) ['boat']"),
    (["--class-balance", "ship"], 1, "expected CLASS=WEIGHT"),
    (["--paired-fraction", "1.5"], 1, "paired_fraction must be in [0, 1)"),
    (["--n-scenes", "many"], 2, "invalid int value"),
])
def test_cli_bad_arguments(tmp_path, cli, args, rc, msg):
    r = cli("sarlang-synth", "--out", tmp_path/"w", *args)
    assert r.returncode == rc and msg in r.stderr, (r.returncode, r.stderr)
    assert not (tmp_path/"w"/"world"/"world.json").exists()


def test_cli_needs_out(cli):
    r = cli("sarlang-synth", "--n-scenes", "3")
    assert r.returncode == 2 and "--out" in r.stderr


def test_cli_output_is_a_run_directory(tmp_path, cli):
    r = cli("sarlang-synth", "--out", tmp_path, "--n-scenes", "6", "--size", "128", "--enl", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    rd = open_run(tmp_path)                          # keeps the config the command wrote
    assert rd.config["n_scenes"] == 6 and rd.config["enl"] == 3.0
    mtime = (tmp_path/"world/world.json").stat().st_mtime_ns
    assert syn.ensure_world(rd)["params"]["size"] == 128 and (tmp_path/"world/world.json").stat().st_mtime_ns == mtime


def test_render_scene_regenerates_the_files(world30):
    scenes = syn.load_scenes(world30)
    s = next(s for s in scenes if s["source"] == "sardet")
    inten, rgb, lc, meta = syn.render_scene(world30, s)
    assert np.array_equal(inten[0], read_sar(world30/s["files"]["sar_raw"]))
    assert np.array_equal(lc, np.asarray(Image.open(world30/s["files"]["landcover_map"])))
    assert meta["landcover"] == s["landcover"] and rgb.shape == (256, 256, 3)


def test_cli_out_is_a_file(tmp_path, cli):
    (tmp_path/"f").write_text("x")
    r = cli("sarlang-synth", "--out", tmp_path/"f", "--n-scenes", "2", "--quiet")
    assert r.returncode == 1 and "sarlang-synth: error:" in r.stderr and "cannot write the world" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_replaced_world_drops_its_preprocessed_images(tmp_path):
    "A different world replacing the old one must not leave the old world's preprocessed PNGs for 02 to resume from."
    syn.build_world(tmp_path, n_scenes=3, seed=0, size=128, show_progress=False)
    pre = tmp_path/"SARimages"/"0000001.png"; pre.write_bytes(b"preprocessed from seed 0")   # what 02_preprocess writes
    syn.build_world(tmp_path, n_scenes=3, seed=0, size=128, show_progress=False)             # the same world again: kept
    assert pre.read_bytes() == b"preprocessed from seed 0"
    syn.build_world(tmp_path, n_scenes=3, seed=1, size=128, overwrite=True, show_progress=False)  # another world
    assert not pre.exists()


def test_hints_name_options_that_exist():
    "Every --flag the module's messages name is a flag of sarlang-synth; every `(Python: arg=)` an argument of its functions."
    import inspect, re
    from fastcore.script import anno_parser
    flags = {o for a in anno_parser(syn.synth_cmd)._actions for o in a.option_strings}
    s = inspect.getsource(syn)
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", s))
    assert named and named <= flags, named - flags
    args = {p for f in vars(syn).values() if inspect.isfunction(f) for p in inspect.signature(f).parameters}
    py = {n for h in re.findall(r"Python: ([^)]*)\)", s) + re.findall(r"pass (\w+=\w+)", s) for n in (re.findall(r"(\w+)=", h) or [h.strip()])}
    assert py and py <= args, py - args


def test_run_stage(tmp_path):
    "Stage 03's entry point builds the run's world (smoke) or records that the paper profile has none."
    rd = open_run(tmp_path/"run", "smoke", n_scenes=3, scene_size=128, seed=2)
    counts = syn.run_stage(rd, show_progress=False)
    assert counts["scenes"] == 3 and rd.stage_complete("03_synthetic") and len(syn.load_scenes(rd)) == 3
    rp = open_run(tmp_path/"paper", "paper")
    assert syn.run_stage(rp) is None and rp.manifest("03_synthetic")["skipped"] is True
