"sarlang-infer (11_inference): data-parallel under torchrun (2 CPU ranks, gloo) gives the single-process file; resume per rank; exit codes."
import json, os, socket, subprocess, sys
from pathlib import Path
import pytest, torch
from sarlang_nb.predictions import read_predictions
from sarlang_nb.inference import main as infer_main, shard, PRED_FILE, RESULT_FILE, STATS_FILE, PARTS_DIR, REQUEST_FILE
from sarlang_nb.testing import demo_dataset

N_IMAGES, BATCH = 12, 2      # 12 images -> 4 test images: 12 VQA rows + 4 captions, 8 global batches of 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "A demo test set (VQA and concise captions) and the single-process predictions of it (one thread, as each torchrun rank)."
    d = tmp_path_factory.mktemp("infer")
    files = demo_dataset(d/"data", N_IMAGES, seed=0)
    data = [str(files["vqa_test"]), str(files["caption_test_concise"])]
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try: assert infer_main(_args(data, d/"single")) == 0
    finally: torch.set_num_threads(threads)
    return d, data


def _args(data, out):
    return ["--model", "qwen2-vl", "--data", *data, "--out", str(out), "--batch-size", str(BATCH), "--max-new-tokens", "3"]


def _torchrun(data, out, cwd):
    "sarlang-infer under torchrun --nproc_per_node 2 on CPU."
    with socket.socket() as so: so.bind(("127.0.0.1", 0)); port = so.getsockname()[1]   # a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SARLANG_PROGRESS": "0", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "sarlang_nb.inference", *_args(data, out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.mark.timeout(400)
def test_torchrun_two_ranks_merge_to_the_single_process_file(data):
    "Two gloo ranks, each its slice: one merged generated_predictions.jsonl identical byte for byte, the same VQA_result.csv, no parts left."
    d, files = data
    r = _torchrun(files, d/"ddp", d)
    single, ddp = d/"single", d/"ddp"
    assert (ddp/PRED_FILE).read_bytes() == (single/PRED_FILE).read_bytes()
    assert (ddp/RESULT_FILE).read_bytes() == (single/RESULT_FILE).read_bytes()
    assert json.loads((ddp/REQUEST_FILE).read_text()) == json.loads((single/REQUEST_FILE).read_text())
    assert not (ddp/PARTS_DIR).exists()
    st = json.loads((ddp/STATS_FILE).read_text())
    n = len(read_predictions(single/PRED_FILE))
    assert st["world_size"] == 2 and st["samples"] == n and st["generated_now"] == n and st["resumed_rows"] == 0
    assert [p["samples"] for p in st["ranks"]] == [len(shard(n, BATCH, k, 2)) for k in range(2)]
    assert r.stdout.count('"world_size": 2') == 1          # rank 0 alone reports


@pytest.mark.timeout(400)
def test_torchrun_resumes_each_rank_from_its_part(data):
    "A run killed part-way (rank 0's part complete, rank 1's cut inside a row): each rank keeps its own rows, the merged file is the same."
    d, files = data
    single, out = d/"single", d/"killed"
    rows = (single/PRED_FILE).read_text().splitlines(keepends=True)
    n = len(rows)
    out.mkdir(); (out/PARTS_DIR).mkdir()
    (out/REQUEST_FILE).write_text((single/REQUEST_FILE).read_text())                     # as the killed run recorded it
    i0, i1 = shard(n, BATCH, 0, 2), shard(n, BATCH, 1, 2)
    mark = json.dumps({**json.loads(rows[i0[1]]), "predict": "KEPT"}, ensure_ascii=False) + "\n"   # proves rank 0 did not redo its rows
    (out/PARTS_DIR/f"rank0-of-2.b{BATCH}.jsonl").write_text("".join([rows[i0[0]], mark] + [rows[i] for i in i0[2:]]))
    (out/PARTS_DIR/f"rank1-of-2.b{BATCH}.jsonl").write_text("".join(rows[i] for i in i1[:3]) + rows[i1[3]][:15])   # killed in its 4th row
    _torchrun(files, out, d)
    got = read_predictions(out/PRED_FILE)
    want = read_predictions(single/PRED_FILE)
    assert got[i0[1]]["predict"] == "KEPT"
    assert [r for k, r in enumerate(got) if k != i0[1]] == [r for k, r in enumerate(want) if k != i0[1]]
    st = json.loads((out/STATS_FILE).read_text())
    assert [p["resumed_rows"] for p in st["ranks"]] == [len(i0), 2]                        # rank 1: back to its last whole batch
    assert st["resumed_rows"] == len(i0) + 2 and st["generated_now"] == n - len(i0) - 2
    assert not (out/PARTS_DIR).exists()


def test_exit_codes(data, tmp_path, capsys):
    "Bad input 1 (named on stderr as sarlang-infer: error: ...), usage 2, other settings refused 1, --no-resume starts over."
    d, files = data
    assert infer_main(["--data", *files, "--out", str(tmp_path/"o")]) == 1
    assert "sarlang-infer: error: pass --model NAME" in capsys.readouterr().err
    assert infer_main(["--model", "qwen2-vl", "--data", str(tmp_path/"none.json"), "--out", str(tmp_path/"o")]) == 1
    assert "none.json: data file not found" in capsys.readouterr().err
    assert infer_main(_args(files, tmp_path/"o") + ["--batch-size", "0"]) == 2
    assert "argument --batch-size: must be a positive integer" in capsys.readouterr().err
    assert infer_main(["--model", "qwen2-vl", "--out", str(tmp_path/"o")]) == 2           # --data is required
    small = _args(files, tmp_path/"p") + ["--max-samples", "2"]
    assert infer_main(small) == 0
    assert infer_main(small[:-2] + ["--max-samples", "3"]) == 1
    err = capsys.readouterr().err
    assert "made with other settings (max_samples differ)" in err and PRED_FILE in err
    assert infer_main(small[:-2] + ["--max-samples", "3", "--no-resume"]) == 0
    assert len(read_predictions(tmp_path/"p"/PRED_FILE)) == 6


@pytest.mark.timeout(400)
def test_torchrun_refusal_stops_every_rank(data):
    "Other settings into an OUT: rank 0 refuses, every rank stops with that error (no rank left waiting), the files stay."
    d, files = data
    single = d/"single"
    before = (single/PRED_FILE).read_bytes()
    with socket.socket() as so: so.bind(("127.0.0.1", 0)); port = so.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SARLANG_PROGRESS": "0", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "sarlang_nb.inference", *_args(files, single)[:-1], "4"]                 # --max-new-tokens 4, not 3
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=d)
    assert r.returncode != 0
    assert r.stderr.count("sarlang-infer: error: rank 0 of 2:") == 2 and "(max_new_tokens differ)" in r.stderr
    assert (single/PRED_FILE).read_bytes() == before and not (single/PARTS_DIR).exists()
