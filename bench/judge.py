"""Bench: the VQA judge (sarlang_nb.metrics.evaluate_vqa -> sarlang_nb.llm.LLMClient) against a local
OpenAI-compatible server that answers after 100 ms. Rows all need the judge (no containment, no yes/no/0-99 ground
truth). Prints rows/s at concurrency 1 (on a subset, extrapolated: 10,000 sequential calls of 100 ms would take
~17 minutes) and at concurrency 64 (all rows), and their ratio. Prints figures only; never pass/fail.

    .venv/bin/python bench/judge.py [--rows 10000] [--subset 100] [--latency 0.1] [--concurrency 64]
"""
import os, sys, time, json, argparse, tempfile, subprocess
from pathlib import Path
os.environ.setdefault("SARLANG_PROGRESS", "0")
from sarlang_nb.metrics import evaluate_vqa, judge_client

SERVER = """
import sys, time
from sarlang_nb.testing import ChatTestServer
srv = ChatTestServer(reply=lambda req: "1" if len(req["messages"][0]["content"][0]["text"]) % 2 else "0", latency=float(sys.argv[1])).start()
print(srv.port, flush=True)
sys.stdin.read()          # serve until the bench closes our stdin
srv.stop()
"""

def rows(n):
    return [dict(row=i, image=f"SARimages/{i:07d}.png", question=f"What is the main land cover of scene {i}?",
                 gt=f"category {i} alpha", predict=f"class {i} beta", application="object classification") for i in range(n)]

def run(base_url, rs, concurrency, cache):
    cl = judge_client("gpt-4o-mini", base_url, concurrency, cache, progress=False)
    t0 = time.perf_counter(); rep, _ = evaluate_vqa(rs, "official", cl); dt = time.perf_counter() - t0
    assert rep["judged_by_llm"] == len(rs) and rep["llm_errors"] == 0, rep
    return dt, rep

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000); p.add_argument("--subset", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.1); p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()
    srv = subprocess.Popen([sys.executable, "-c", SERVER, str(a.latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = f"http://127.0.0.1:{int(srv.stdout.readline())}/v1"
        with tempfile.TemporaryDirectory() as d:
            all_rows = rows(a.rows)
            t1, _ = run(base_url, all_rows[:a.subset], 1, Path(d)/"c1.sqlite")
            tn, rep = run(base_url, all_rows, a.concurrency, Path(d)/"cn.sqlite")
            t2, rep2 = run(base_url, all_rows, a.concurrency, Path(d)/"cn.sqlite")    # the same rows again: all cached
        r1, rn = a.subset/t1, a.rows/tn
        print(f"server: local ChatTestServer in its own process, {a.latency*1000:.0f} ms per answer; client: LLMClient + SQLite cache")
        print(f"concurrency 1 : {a.subset} rows in {t1:.2f} s -> {r1:.2f} rows/s (subset; {a.rows} rows would take ~{a.rows/r1/60:.1f} min)")
        print(f"concurrency {a.concurrency}: {a.rows} rows in {tn:.2f} s -> {rn:.1f} rows/s  (ideal {a.concurrency/a.latency:.0f} rows/s)")
        print(f"speed-up     : {rn/r1:.1f}x (target >= 20x)")
        print(f"requests     : {rep['llm_calls']} answered, {rep['llm_attempts']} tried (llm_calls never exceeds what the server received)")
        print(f"re-run (all cached): {a.rows} rows in {t2:.2f} s, {rep2['llm_calls']} calls, {rep2['cache_hits']} cache hits")
        print(json.dumps({"rows": a.rows, "subset_c1": a.subset, "latency_s": a.latency, "rows_per_s_c1": round(r1, 3),
                          f"rows_per_s_c{a.concurrency}": round(rn, 2), "speedup": round(rn/r1, 2), "rerun_s": round(t2, 3)}))
    finally:
        srv.stdin.close(); srv.wait(timeout=10)

if __name__ == "__main__": main()
