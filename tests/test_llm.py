"Tests of the one LLM client (sarlang_nb.llm) against the local test server."
import os, sys, time, json, subprocess
from pathlib import Path
import pytest
from sarlang_nb.core import SarlangError
from sarlang_nb.llm import LLMClient, LLMCache, last_user_text, user_message, request_key, normalize_request
from sarlang_nb.testing import ChatTestServer

os.environ.setdefault("SARLANG_PROGRESS", "0")

def test_concurrency_bound_and_order(tmp_path):
    with ChatTestServer(reply=last_user_text, latency=0.02) as srv:
        cl = LLMClient("m", srv.base_url, concurrency=4, cache=tmp_path/"c.sqlite")
        res = cl.complete_many([f"q{i}" for i in range(30)])
        assert [r.text for r in res] == [f"q{i}" for i in range(30)]
        assert 1 < srv.max_inflight <= 4
        assert srv.requests == 30 and cl.stats["calls"] == 30

def test_random_faults_all_answered_and_cached(tmp_path):
    with ChatTestServer(reply=last_user_text, p429=0.2, p500=0.2, pjunk=0.1, seed=1) as srv:
        cl = LLMClient("m", srv.base_url, concurrency=8, backoff=0.005, max_retries=20, cache=tmp_path/"c.sqlite")
        res = cl.complete_many([f"q{i}" for i in range(60)])
        assert all(r.ok for r in res), [r.error for r in res if not r.ok]
        assert srv.outcomes["429"] and srv.outcomes["500"] and srv.outcomes["junk"]
        assert cl.stats["retries"] == srv.requests - 60
        n = srv.requests
        res2 = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite").complete_many([f"q{i}" for i in range(60)])
        assert srv.requests == n and all(r.cached for r in res2)

def test_client_errors_not_retried():
    with ChatTestServer() as srv:
        r = LLMClient("m", srv.base_url.replace("/v1", "/nope"), backoff=0.005).complete("x")
        assert not r.ok and "HTTP 404" in r.error and srv.requests == 0   # unrouted paths are not counted
    for code in ("400", "401"):
        with ChatTestServer(fault=lambda n, req: code) as srv:
            r = LLMClient("m", srv.base_url, backoff=0.005).complete("x")
            assert not r.ok and f"HTTP {code}" in r.error and srv.requests == 1 and r.calls == 1

def test_connection_refused_reported(tmp_path):
    srv = ChatTestServer().start(); url = srv.base_url; srv.stop()
    r = LLMClient("m", url, max_retries=1, backoff=0.005).complete("x")
    assert not r.ok and "connection error" in r.error

def test_image_request_reaches_server(tmp_path):
    png = tmp_path/"a.png"; png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    with ChatTestServer(reply=lambda req: req["messages"][0]["content"][0]["image_url"]["url"][:31]) as srv:
        r = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite").complete([user_message("Describe.", [png])])
        assert r.text == "data:image/png;base64,iVBORw0KG"
    raw = (tmp_path/"c.sqlite").read_bytes()
    assert b"iVBORw0KG" not in raw   # the cache stores the image's hash, not the image

def test_no_key_for_openai_is_clear_error_but_cache_needs_none(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False); monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SarlangError, match="OPENAI_API_KEY"):
        LLMClient("m", cache=tmp_path/"c.sqlite").complete("x")
    cl = LLMClient("m", cache=tmp_path/"c.sqlite")
    req = normalize_request("x", cl.defaults)
    cl.cache.put(request_key("m", req), "m", req, "ok")         # an answer OpenAI gave in an earlier run
    r = cl.complete("x")                                          # OpenAI, no key: fine, nothing to call
    assert r.cached and r.text == "ok"

def test_killed_run_resumes_without_repeats(tmp_path):
    db = tmp_path/"c.sqlite"
    with ChatTestServer(latency=0.05) as srv:
        code = ("from sarlang_nb.llm import LLMClient\n"
                f"LLMClient('m', {srv.base_url!r}, concurrency=2, cache={str(db)!r}, progress=False)"
                ".complete_many([f'item {i}' for i in range(60)])")
        p = subprocess.Popen([sys.executable, "-c", code])
        try:
            t0 = time.time()
            while not (db.exists() and len(LLMCache(db)) >= 10):
                assert time.time() - t0 < 60 and p.poll() is None
                time.sleep(0.02)
        finally: p.kill(); p.wait()
        done = len(LLMCache(db)); assert 10 <= done < 60
        answered = {last_user_text(r) for r in srv.log}
        srv.reset()
        res = LLMClient("m", srv.base_url, concurrency=8, cache=db).complete_many([f"item {i}" for i in range(60)])
        assert all(r.ok for r in res)
        assert srv.requests == 60 - done
        cached = {f"item {i}" for i, r in enumerate(res) if r.cached}
        assert not cached & {last_user_text(r) for r in srv.log}   # nothing answered before was asked again

def test_sync_wrapper_inside_a_running_loop(tmp_path):
    "Jupyter (papermill, ipykernel) runs cells inside an event loop: complete_many must still work there."
    import asyncio
    with ChatTestServer(reply=last_user_text) as srv:
        cl = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite")
        async def cell(): return cl.complete_many(["a", "b"])
        assert [r.text for r in asyncio.run(cell())] == ["a", "b"]
        async def cell_async(): return await cl.acomplete_many(["a", "c"])
        res = asyncio.run(cell_async())
        assert [r.text for r in res] == ["a", "c"] and res[0].cached and not res[1].cached

def _parse01(t):
    if t.strip() not in ("0", "1"): raise ValueError(f"not 0/1: {t!r}")
    return int(t)

def test_invalid_reply_not_cached_resume_asks_again(tmp_path):
    "A reply `parse` rejects (after the invalid retries) is not cached: a resumed run asks again and can get a valid one."
    with ChatTestServer(reply=lambda req: "maybe" if srv.requests <= 3 else "1") as srv:
        r = LLMClient("m", srv.base_url, invalid_retries=2, cache=tmp_path/"c.sqlite").complete("q", parse=_parse01)
        assert r.error.startswith("invalid reply") and srv.requests == 3 and len(LLMCache(tmp_path/"c.sqlite")) == 0
        r = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite").complete("q", parse=_parse01)
        assert r.ok and r.value == 1 and not r.cached and srv.requests == 4
        r = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite").complete("q", parse=_parse01)
        assert r.ok and r.cached and srv.requests == 4          # the valid reply is cached

def test_cached_reply_that_does_not_parse_is_asked_again(tmp_path):
    "A cached reply that the caller's `parse` rejects (e.g. stored by an older version) is not served."
    with ChatTestServer(reply=lambda req: "1") as srv:
        cl = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite")
        key = request_key("m", normalize_request("q", cl.defaults), srv.base_url)
        cl.cache.put(key, "m", normalize_request("q", cl.defaults), "maybe")
        r = cl.complete("q", parse=_parse01)
        assert r.ok and r.value == 1 and srv.requests == 1
        assert cl.cache.get(key) == "1"

def test_cache_key_includes_endpoint(tmp_path):
    "Replies of one endpoint are never served for another one (same model name, same request, same cache file)."
    with ChatTestServer(reply=lambda req: "0") as a, ChatTestServer(reply=lambda req: "1") as b:
        ra = LLMClient("gpt-4o-mini", a.base_url, cache=tmp_path/"c.sqlite").complete("q")
        rb = LLMClient("gpt-4o-mini", b.base_url, cache=tmp_path/"c.sqlite").complete("q")
        assert (ra.text, rb.text) == ("0", "1") and not rb.cached and b.requests == 1
        ra2 = LLMClient("gpt-4o-mini", a.base_url + "/", cache=tmp_path/"c.sqlite").complete("q")   # the same endpoint
        assert ra2.cached and ra2.text == "0" and a.requests == 1
        assert a.log[0] == b.log[0] == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}], "temperature": 0.0}
    req = normalize_request("q")
    assert request_key("m", req) == request_key("m", req, "https://api.openai.com/v1/") == request_key("m", req, "https://API.openai.com/v1")
    assert request_key("m", req) != request_key("m", req, "http://127.0.0.1:8000/v1") != request_key("m", req, "http://127.0.0.1:8001/v1")

def test_duplicate_items_asked_once(tmp_path):
    "Identical requests in one batch are sent once; every duplicate gets the same reply."
    with ChatTestServer(reply=last_user_text, latency=0.05) as srv:
        cl = LLMClient("m", srv.base_url, cache=tmp_path/"c.sqlite")
        res = cl.complete_many(["a"]*10 + ["b", "a", "b"])
        assert [r.text for r in res] == ["a"]*10 + ["b", "a", "b"]
        assert srv.requests == 2 and cl.stats["calls"] == 2 and sum(r.calls for r in res) == 2
        assert len({id(r) for r in res}) == len(res)            # separate result objects
    with ChatTestServer(reply=last_user_text) as srv:             # also without a cache
        res = LLMClient("m", srv.base_url).complete_many(["x", "x", 3, "x"])
        assert [r.text for r in res] == ["x", "x", None, "x"] and "bad request" in res[2].error and srv.requests == 1

# ---------------------------------------------------------------- issue 17
@pytest.mark.parametrize("url, says", [("http://127.0.0.1:99999/v1", "port"), ("http://127.0.0.1:abc/v1", "port"),
                                       ("http://[bad", "not a valid URL"), ("ftp://example.com/v1", "http or https"),
                                       ("localhost:8000/v1", "http or https"), ("http:///v1", "no host")])
def test_malformed_base_url_is_a_clear_error(url, says):
    with pytest.raises(SarlangError, match=says) as e: LLMClient("m", url)
    assert "base URL" in str(e.value) and repr(url) in str(e.value)

def test_malformed_base_url_from_the_environment_names_it(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:99999/v1")
    with pytest.raises(SarlangError, match="OPENAI_BASE_URL"): LLMClient("m")

def test_calls_count_only_requests_the_server_answered(tmp_path):
    srv = ChatTestServer().start(); url = srv.base_url; srv.stop()      # nothing listens: nothing can be received
    cl = LLMClient("m", url, max_retries=2, backoff=0.001)
    r = cl.complete("x")
    assert not r.ok and r.error_kind == "connection"
    assert cl.stats["calls"] == 0 and r.calls == 0 and cl.stats["attempts"] == 3
    with ChatTestServer(fault=lambda n, req: "hang" if n % 3 == 0 else ("500" if n % 3 == 1 else None), hang=0.6) as srv:
        cl = LLMClient("m", srv.base_url, concurrency=16, max_retries=3, backoff=0.001, timeout=0.3)
        res = cl.complete_many([f"q{i}" for i in range(40)])
        time.sleep(0.5)                                                  # let the hung handlers register
        assert cl.stats["calls"] <= srv.requests <= cl.stats["attempts"]
        assert sum(r.calls for r in res) == cl.stats["calls"]
        assert any(r.error_kind == "timeout" for r in res) or cl.stats["timeouts"] > 0

def test_error_kind_names_the_cause():
    with ChatTestServer(fault=lambda n, req: "401") as srv:
        r = LLMClient("m", srv.base_url, backoff=0.001).complete("x")
        assert r.error_kind == "HTTP 401" and "HTTP 401" in r.error
    with ChatTestServer(fault=lambda n, req: "hang", hang=1.0) as srv:
        r = LLMClient("m", srv.base_url, backoff=0.001, timeout=0.2, max_retries=0).complete("x")
        assert r.error_kind == "timeout" and "timeout" in r.error
    with ChatTestServer() as srv:
        r = LLMClient("m", srv.base_url).complete("x", parse=lambda t: int(t))
        assert r.error_kind == "invalid reply"


def test_error_carries_the_servers_message():
    "A client error says the status and what the endpoint said about it, not only the class of error."
    with ChatTestServer(fault=lambda n, req: "401") as srv:
        r = LLMClient("m", srv.base_url, backoff=0.001).complete("x")
    assert r.error == "HTTP 401: Incorrect API key provided"

def test_no_call_counted_when_no_request_was_sent(monkeypatch):
    "A refused start (no key for OpenAI) sends nothing: `calls` stays 0."
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cl = LLMClient("m")
    with pytest.raises(SarlangError, match="OPENAI_API_KEY"): cl.complete("x")
    assert cl.stats["calls"] == 0

def test_chat_test_server_lives_in_testing_only():
    import sarlang_nb.llm as L, sarlang_nb.testing as T
    assert hasattr(T, "ChatTestServer") and not hasattr(L, "ChatTestServer")
    r = subprocess.run([sys.executable, "-c", "import sys, sarlang_nb.llm; print('sarlang_nb.testing' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr                 # importing the client does not load the fixtures