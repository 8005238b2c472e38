"Overall similarity: closed form vs the pairwise reference (random and real features), VGG16 weights files, the CLI, Table 3."
import csv, json, os
from pathlib import Path
import numpy as np
import pytest
from sarlang_nb.core import SarlangError, RunDir
from sarlang_nb import similarity as S

os.environ["SARLANG_PROGRESS"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)


@pytest.mark.parametrize("n,d,batch,ddof", [(1500, 64, 333, 0), (1500, 64, 1500, 1), (257, 900, 50, 0), (2, 5, 1, 0), (3, 5, 2, 1)])
def test_closed_form_equals_pairwise_float64(n, d, batch, ddof):
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, d)) + rng.standard_normal(d)
    fast = S.overall_similarity((x[i:i+batch] for i in range(0, n, batch)), ddof=ddof)
    ref = S.pairwise_similarity(x, block=97, ddof=ddof)
    assert fast == pytest.approx(ref, abs=1e-9)


def test_reference_is_the_definition():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 9))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = np.array([u[i] @ u[j] for i in range(120) for j in range(i)])   # i > j, literally
    assert S.pairwise_similarity(x, block=7) == pytest.approx((c.mean(), c.var()), abs=1e-13)
    assert S.pairwise_similarity(x, ddof=1)[1] == pytest.approx(c.var(ddof=1), abs=1e-13)


def test_torch_tensor_and_merge():
    import torch
    x = np.random.default_rng(2).standard_normal((100, 16))
    assert S.overall_similarity(torch.from_numpy(x)) == pytest.approx(S.overall_similarity(x), abs=1e-12)
    a = S.SimilarityAccumulator().update(x[:10]).merge(S.SimilarityAccumulator().update(x[10:]))
    assert a.result() == pytest.approx(S.overall_similarity(x), abs=1e-12)
    assert a.pairs == 100 * 99 // 2


def test_bad_features():
    x = np.ones((5, 3)); x[3] = 0
    with pytest.raises(SarlangError, match="row 3: all-zero"): S.overall_similarity(x)
    with pytest.raises(SarlangError, match="row 3: all-zero"): S.pairwise_similarity(x)
    x[3] = np.inf
    with pytest.raises(SarlangError, match="row 3: non-finite"): S.overall_similarity(x)
    with pytest.raises(SarlangError, match="at least 3"): S.overall_similarity(np.eye(2), ddof=1)
    with pytest.raises(SarlangError, match="no features"): S.pairwise_similarity(iter([]))


def test_real_sar_features_vgg16_fc7(shared_data):
    "Closed form vs reference on VGG16 fc7 features of real SAR chips (He-initialised weights: the real code path)."
    from sarlang_nb.sario import find_images
    imgs = find_images(shared_data/"real_sar_det"/"images")[:10]
    ext = S.VGG16Extractor(S.random_vgg16(0), "fc7", batch_size=5)
    f = np.concatenate(list(ext.batches(imgs))).astype(np.float64)
    assert f.shape == (10, 4096) and (f >= 0).all()
    assert S.overall_similarity(f) == pytest.approx(S.pairwise_similarity(f, block=3), abs=1e-9)
    px = np.concatenate(list(S.PixelStatsExtractor().batches(find_images(shared_data/"real_sar_det"/"images")))).astype(np.float64)
    assert S.overall_similarity(px) == pytest.approx(S.pairwise_similarity(px, block=8), abs=1e-9)


def test_vgg16_weights_file_round_trip(tmp_path):
    "A torchvision-format state-dict file loads (memory-mapped) into our module and gives the same features."
    import torch
    m = S.random_vgg16(3)
    torch.save(m.state_dict(), tmp_path/"vgg16-test.pth")
    loaded = S.load_vgg16(tmp_path)                  # a folder holding one vgg16*.pth
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32))
    with torch.inference_mode():
        for layer in ("fc7", "fc6", "pool5"): assert torch.equal(m.embed(x, layer), loaded.embed(x, layer))
    sd = m.state_dict(); sd["classifier.6.weight"] = torch.zeros(10, 4096); sd["classifier.6.bias"] = torch.zeros(10)
    torch.save(sd, tmp_path/"other.pth")
    with pytest.raises(SarlangError, match="other.pth: shape mismatch for classifier.6.weight"): S.load_vgg16(tmp_path/"other.pth")
    del sd, m, loaded


def _images(folder, n, rgb=False, seed=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.gamma(1.0, 40 + 10 * i, (48, 48, 3) if rgb else (48, 48)).clip(0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder/f"{i:07d}.png")


def test_cli_images_and_texts(cli, tmp_path):
    _images(tmp_path/"imgs", 6)
    r = cli("sarlang-similarity", "images", tmp_path/"imgs", "--check")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 6 and out["features"] == S.PIXEL_STATS_LABEL
    assert out["max_abs_difference"] < 1e-6 and 0 < out["mean"] <= 1
    (tmp_path/"caps.csv").write_text("image,caption\na.png,a ship at sea\nb.png,two ships at sea\nc.png,a road across farmland\n")
    r = cli("sarlang-similarity", "--ddof", "1", "texts", tmp_path/"caps.csv")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 3 and out["ddof"] == 1 and out["features"].startswith("Sentence-BERT")
    r = cli("sarlang-similarity", "images", tmp_path/"nope")
    assert r.returncode == 1 and "no such file or folder" in r.stderr
    r = cli("sarlang-similarity", "images", tmp_path/"imgs", "--vgg16-weights", tmp_path/"missing.pth")
    assert r.returncode == 1 and "--vgg16-weights" in r.stderr
    (tmp_path/"bad.csv").write_text("image,foo\na,b\n")
    r = cli("sarlang-similarity", "texts", tmp_path/"bad.csv")
    assert r.returncode == 1 and "bad.csv: no caption column" in r.stderr
    assert cli("sarlang-similarity", "--help").returncode == 0


def test_table3_for_a_run(cli, tmp_path):
    rd = RunDir(tmp_path/"run").create()
    _images(rd.sar_raw, 5)
    _images(rd.sar_images, 3, seed=1)           # preprocessed images win over raw ones with the same id
    _images(rd.rgb_images, 4, rgb=True)
    (rd.captions/"Caption-training.csv").write_text("image,caption,style\nSARimages/0000000.png,a ship in port,complex\n"
                                                    "SARimages/0000001.png,a ship,concise\n")
    (rd.captions/"Caption_test.csv").write_text("image,caption\nSARimages/0000002.png,a long bridge over a river\n")
    (rd.captions/"Caption_test1.csv").write_text("image,caption\nSARimages/0000003.png,a bridge\n")
    assert [p.parent.name for p in S.run_sar_images(rd)] == ["SARimages"] * 3 + ["raw"] * 2
    r = cli("sarlang-similarity", "run", rd.path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(rd.tables/"table3_similarity.csv")))
    ours = {x["collection"]: x for x in rows if x["source"] == "this run"}
    assert set(ours) == {"SAR images", "paired RGB images", "captions (all)", "captions (complex)", "captions (concise)"}
    assert ours["SAR images"]["N"] == "5" and ours["captions (all)"]["N"] == "4" and ours["captions (concise)"]["N"] == "2"
    assert ours["SAR images"]["features"] == S.PIXEL_STATS_LABEL
    paper = [x for x in rows if x["source"] == "paper Table 3"]
    assert [(x["dataset"], x["modality"]) for x in paper] == [(d, m) for d in S.PAPER_TABLE3_DATASETS for m in ("image", "text")]
    assert sum(x["mean"] != S.NOT_TRANSCRIBED for x in paper) == 13 and len(S.PAPER_TABLE3) == 13   # the pairs the paper prints
    md = (rd.tables/"table3_similarity.md").read_text()
    assert "pixel statistics (not VGG16)" in md and "population variance" in md
    # the paper's values from a CSV go beside the run's rows; a bad CSV is refused by row, the table left as it was
    pv = tmp_path/"paper.csv"
    pv.write_text("dataset,modality,mean,variance,N\nRSICD,text,0.31,0.02,\"10,921\"\nSARDet-100k,image,0.26,0.01,\n")
    r = cli("sarlang-similarity", "run", rd.path, "--paper-values", pv)
    assert r.returncode == 0, r.stderr
    got = {(x["dataset"], x["modality"]): x for x in csv.DictReader(open(rd.tables/"table3_similarity.csv"))}
    assert (got[("RSICD", "text")]["mean"], got[("RSICD", "text")]["N"]) == ("0.31", "10921")
    assert got[("SARDet-100k", "image")]["variance"] == "0.01" and got[("UCM", "image")]["mean"] == "0.13"   # corrected / published
    assert got[("FUSAR-Map", "text")]["mean"] == S.NOT_TRANSCRIBED
    before = (rd.tables/"table3_similarity.csv").read_text()
    pv.write_text("dataset,modality,mean,variance\nRSICD,text,high,0.02\n")
    r = cli("sarlang-similarity", "run", rd.path, "--paper-values", pv)
    assert r.returncode == 1 and "paper.csv row 2: RSICD/text: mean and variance must be numbers" in r.stderr
    assert (rd.tables/"table3_similarity.csv").read_text() == before


def test_read_texts_bad_records_name_their_line(tmp_path):
    "Bad JSON Lines records are clear errors naming the file and the line (counted from 1, blank lines included)."
    from sarlang_nb.similarity import read_texts
    p = tmp_path/"t.jsonl"
    p.write_text('{"caption": "a ship"}\n\n{"caption": "a port"\n')
    with pytest.raises(SarlangError, match=r"t\.jsonl row 3: invalid JSON"): read_texts(p)
    p.write_text('{"caption": "a ship"}\n\n{"note": "x"}\n')
    with pytest.raises(SarlangError, match=r"t\.jsonl row 3: record has no"): read_texts(p)
    p.write_text('{"caption": "a ship"}\n7\n')
    with pytest.raises(SarlangError, match=r"t\.jsonl row 2: .*record"): read_texts(p)
    p.write_text('{"caption": "a ship"}\n{"caption": null}\n')
    with pytest.raises(SarlangError, match=r"t\.jsonl row 2: .*string"): read_texts(p)
    q = tmp_path/"t.json"
    q.write_text('["a ship", {"text": ["not", "text"]}]')
    with pytest.raises(SarlangError, match=r"t\.json row 2: .*string"): read_texts(q)
    p.write_text('{"caption": "a ship"}\n\n"a port"\n')
    assert read_texts(p) == ["a ship", "a port"]


def test_no_features_is_a_clear_error(tmp_path, capsys):
    "No vectors at all (an empty text file, an empty batch stream) is the same clear error as one vector."
    for x in (np.ones((0, 3)), iter([]), [np.ones((0, 3))]):
        with pytest.raises(SarlangError, match="need at least 2 feature vectors, got 0"): S.overall_similarity(x)
    with pytest.raises(SarlangError, match="no features"): S.pairwise_similarity(np.ones((0, 3)))
    (tmp_path/"empty.txt").write_text("\n")
    assert S.main(["texts", str(tmp_path/"empty.txt")]) == 1
    assert "got 0" in capsys.readouterr().err


def test_bad_text_inputs_and_flags_are_clear_errors(cli, tmp_path):
    "Encodings, too few items, an unknown device: one error line, no traceback."
    (tmp_path/"latin1.txt").write_bytes("a ship at Bélem\na port\n".encode("latin-1"))
    (tmp_path/"empty.txt").write_text("")
    for args, msg in ((("texts", tmp_path/"latin1.txt"), "latin1.txt: not UTF-8 text: byte 0xe9 in line 1"),
                      (("texts", tmp_path/"empty.txt", "--check"), "need at least 2 items"),
                      (("--device", "gpu", "texts", tmp_path/"empty.txt"), "--device 'gpu' is not a torch device")):
        r = cli("sarlang-similarity", *args)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    # a CSV saved by Excel as "CSV UTF-8" starts with a byte-order mark
    (tmp_path/"pv.csv").write_bytes(b"\xef\xbb\xbfdataset,modality,mean,variance\nUCM,text,0.4,0.02\n")
    assert S.read_paper_table3(tmp_path/"pv.csv") == {("UCM", "text"): (0.4, 0.02, None)}


def test_sample_variance_skips_collections_of_two(tmp_path):
    "With ddof=1 a collection of two items (one pair) has no sample variance: its row is left out, the table is written."
    rd = RunDir(tmp_path/"run").create()
    _images(rd.sar_images, 5)
    _images(rd.rgb_images, 2, rgb=True)
    rows = S.table3_for_run(rd, S.image_extractor(), ddof=1, paper=False)
    assert [r["collection"] for r in rows] == ["SAR images"]


def test_one_bad_image_is_reported_not_the_end_of_the_folder(tmp_path, cli):
    "sarlang-similarity images: an unreadable file and a decompression bomb are named and skipped (exit 3, partial)."
    import numpy as np
    from PIL import Image
    for i in range(4): Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), np.uint8)).save(tmp_path/f"{i}.png")
    (tmp_path/"broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (300, 300)).save(tmp_path/"huge.png")
    r = cli("sarlang-similarity", "images", tmp_path, env={"SARLANG_MAX_PIXELS": "50000"})
    assert r.returncode == 3, r.stderr
    assert "skipped" in r.stderr and "broken.png" in r.stderr and "huge.png" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["n"] == 4 and json.loads(r.stdout)["skipped"] == 2


def _truncated_jpeg(path, seed=9):
    "A JPEG whose header reads (it passes `screen_images`) but whose data stops halfway."
    from PIL import Image
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8)).save(path, quality=95)
    b = path.read_bytes(); path.write_bytes(b[:len(b)//2])
    return path


def test_an_image_that_fails_to_decode_does_not_abort_the_folder(tmp_path, cli):
    "Issue 17: a truncated JPEG passed the header check and then ended the whole command (exit 1); now it is named and skipped, exit 3."
    _images(tmp_path/"imgs", 4)
    _truncated_jpeg(tmp_path/"imgs"/"cut.jpg")
    for extra in ((), ("--check",)):
        r = cli("sarlang-similarity", "images", tmp_path/"imgs", *extra)
        assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
        assert "skipped" in r.stderr and "cut.jpg" in r.stderr and "truncated" in r.stderr
        out = json.loads(r.stdout)
        assert out["n"] == 4 and out["skipped"] == 1 and out["skipped_files"] == [str(tmp_path/"imgs"/"cut.jpg")]
    ext = S.VGG16Extractor(S.random_vgg16(0), "pool5", batch_size=2)      # the VGG16 path skips it the same way
    failed = []
    feats = np.concatenate(list(ext.batches(sorted((tmp_path/"imgs").glob("*")), failed=failed)))
    assert feats.shape == (4, 512) and [p.name for p, _ in failed] == ["cut.jpg"]


def test_table3_of_a_run_skips_an_image_that_fails_to_decode(tmp_path, cli):
    rd = RunDir(tmp_path/"run").create()
    _images(rd.sar_images, 5)
    _truncated_jpeg(rd.sar_images/"0000009.jpg")
    skipped = []
    rows = S.table3_for_run(rd, S.image_extractor(), paper=False, skipped=skipped)
    assert [(r["collection"], r["N"]) for r in rows] == [("SAR images (1 unreadable, skipped)", 5)]
    assert [p.name for p, _ in skipped] == ["0000009.jpg"]
    r = cli("sarlang-similarity", "run", rd.path)
    assert r.returncode == 3 and "0000009.jpg" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "SAR images (1 unreadable, skipped)" in (rd.tables/"table3_similarity.md").read_text()


def test_a_file_named_twice_is_counted_once_and_reported(tmp_path, cli):
    "Duplicate inputs passed silently: the same image given as a file and inside its folder was one more (identical) pair."
    _images(tmp_path/"imgs", 4)
    once = json.loads(cli("sarlang-similarity", "images", tmp_path/"imgs").stdout)
    r = cli("sarlang-similarity", "images", tmp_path/"imgs", tmp_path/"imgs"/"0000001.png", tmp_path/"imgs")
    assert r.returncode == 0, r.stderr
    assert "5 image file(s) given more than once, counted once" in r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 4 and out["repeated"] == 5 and out["mean"] == once["mean"]


def test_shared_flags_before_or_after_the_subcommand_and_usage_errors(tmp_path):
    (tmp_path/"c.txt").write_text("a ship at sea\na ship in port\nfields and a river\n")
    assert S.main(["--ddof", "1", "texts", str(tmp_path/"c.txt")]) == 0
    assert S.main(["texts", str(tmp_path/"c.txt"), "--ddof", "1"]) == 0
    assert S.main(["texts", str(tmp_path/"c.txt"), "--ddof", "2"]) == 2          # not 0 or 1: usage
    assert S.main(["images"]) == 2                                               # no sources: usage
    assert S.main(["frobnicate"]) == 2 and S.main([]) == 2


def test_run_on_a_folder_with_nothing_to_measure_fails(tmp_path, cli):
    "It wrote a Table 3 of the paper's rows only and exited 0; now nothing is written and the command says why."
    r = cli("sarlang-similarity", "run", tmp_path)
    assert r.returncode == 1 and "nothing to measure here" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path/"tables").exists()
