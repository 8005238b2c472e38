"""The docs site in a real browser: build the offline site (from the notebooks and the outputs they carry; nothing is
executed), open every page in headless Chromium and check what a reader would see.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skips, saying so, when they are absent.
Screenshots of the home and results pages are kept under $SARLANG_TEST_ARTIFACTS (default: <tmp>/sarlang-nb-artifacts)."""
import base64, json, os, re, shutil, struct, tempfile, time, zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("SARLANG_TEST_ARTIFACTS") or Path(tempfile.gettempdir())/"sarlang-nb-artifacts")/"docs"

needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                   reason="headless browser test: Debian's chromium and chromium-driver are not installed "
                                          "(apt-get install -y chromium chromium-driver)")


def png_bytes(w=96, h=64):
    "A real PNG (a colour ramp), written without any imaging library."
    rows = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 255 // w, y * 255 // h, 128)) for y in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _noisy_outputs():
    "What a notebook run leaves in a cell: tqdm's warning, progress bars, machine paths, a printed table, a figure."
    return [
        {"output_type": "stream", "name": "stderr", "text":
            f"{ROOT}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.\n"
            "  from .autonotebook import tqdm as notebook_tqdm\n"},
        {"output_type": "stream", "name": "stderr", "text": "\rLoading weights:   0%|          | 0/58 [00:00<?, ?it/s]"},
        {"output_type": "stream", "name": "stderr", "text": "\rLoading weights: 100%|██████████| 58/58 [00:00<00:00, 11193.04it/s]"},
        {"output_type": "stream", "name": "stdout", "text":
            f"wrote /tmp/tmpq1w2e3r4/in/scene.png and {ROOT}/runs/smoke/tables/table_check.md\n"
            "| canary split | images |\n|---|---|\n| train | 84 |\n| test | 36 |\n"},
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": base64.b64encode(png_bytes()).decode(), "text/plain": "<Figure>"}},
    ]


def _executed_folder(d:Path) -> Path:
    "The run's executed notebooks (when there are any), and a copy of 02_preprocess whose first plain code cell carries noisy outputs."
    ex = d/"executed"; ex.mkdir()
    run = ROOT/"runs"/"smoke"/"notebooks"
    if run.is_dir():
        for p in run.glob("*.ipynb"): shutil.copy2(p, ex/p.name)
    src = ex/"02_preprocess.ipynb" if (ex/"02_preprocess.ipynb").exists() else ROOT/"nbs"/"02_preprocess.ipynb"
    nb = json.loads(src.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and not "".join(c["source"]).lstrip().startswith(("#|", "run_dir")))
    cell["outputs"] = _noisy_outputs()
    (ex/"02_preprocess.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    return ex


def _figures_folder(d:Path) -> Path:
    "paper_figures/ when it holds tables or figures, else a small one named as the paper stage names its files."
    real = ROOT/"paper_figures"
    if real.is_dir() and any(p.suffix.lower() in (".png", ".md", ".csv") and p.name != "README.md" for p in real.iterdir()): return real
    f = d/"paper_figures"; f.mkdir()
    (f/"paper_table3_similarity.md").write_text("Table 3 — overall similarity (test fixture).\n\n| dataset | mean |\n|---|---|\n| this run | 0.78 |\n| SARLANG-1M (paper) | 0.80 |\n")
    (f/"paper_table3_similarity.csv").write_text("dataset,mean\nthis run,0.78\nSARLANG-1M (paper),0.80\n")
    (f/"table6_splits.csv").write_text("split,images\ntrain,84\ntest,36\n")
    (f/"fig_training_curves.png").write_bytes(png_bytes(120, 80))
    (f/"fig4_text_statistics.png").write_bytes(png_bytes(80, 60))
    return f


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from sarlang_nb.docs import build_fallback
    d = tmp_path_factory.mktemp("docs")
    ex, figs = _executed_folder(d), _figures_folder(d)
    t = time.time()
    pages = build_fallback(ROOT, out=d/"site", executed=ex, figures=figs)
    print(f"\ndocs: {len(pages)} pages built in {time.time() - t:.1f} s into {d/'site'} (figures from {figs})")
    return d/"site", pages, figs


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER): pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


_WAIT_MATH = """
const done = arguments[arguments.length - 1];
if (!document.getElementById('MathJax-script')) { done('no math'); return; }
const t0 = Date.now();
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { MathJax.startup.promise.then(() => done('typeset'), e => done('error ' + e)); return; }
  if (Date.now() - t0 > 15000) { done('timeout'); return; }
  setTimeout(poll, 50);
})();
"""

_PAGE_FACTS = """
const main = document.querySelector('main.content');
const prose = main.cloneNode(true);
prose.querySelectorAll('pre, code, .cell-input, mjx-container').forEach(e => e.remove());
const shown = main.cloneNode(true);
shown.querySelectorAll('.cell-input, mjx-container').forEach(e => e.remove());
return {
  h1: (main.querySelector('h1') || {}).textContent || '',
  prose: prose.textContent,
  shown: shown.innerText,
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  badImages: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  images: document.images.length,
  active: Array.from(document.querySelectorAll('.sidebar a.active')).map(a => a.getAttribute('href')),
  toc: document.querySelectorAll('.toc a').length,
  h2: main.querySelectorAll('h2').length,
  remote: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('file:')),
  math: document.querySelectorAll('mjx-container').length,
};
"""


def _ids(path:Path, cache={}):
    if path not in cache: cache[path] = set(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))
    return cache[path]


def _shot(drv, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    h = min(int(drv.execute_script("return document.documentElement.scrollHeight")), 8000)
    drv.set_window_size(1400, max(h, 800))
    drv.save_screenshot(str(ARTIFACTS/name))
    drv.set_window_size(1400, 1000)
    return ARTIFACTS/name


def test_site_files(site):
    "Without a browser: every notebook is a page, MathJax and the search index are in the site, nothing comes from a CDN."
    out, pages, _ = site
    assert {f"{p.stem}.html" for p in (ROOT/"nbs").glob("*.ipynb")} | {"results.html"} <= {p.name for p in pages}
    assert (out/"assets"/"mathjax"/"tex-svg.js").stat().st_size > 1_000_000
    recs = json.loads((out/"search.json").read_text(encoding="utf-8"))
    assert any(r["url"].startswith("02_preprocess.html") and "refined lee" in (r["text"] + r["section"] + r["page"]).lower() for r in recs)
    for p in pages:
        h = p.read_text(encoding="utf-8")
        assert not re.search(r'(src|href)="(https?:)?//', h.split("<main", 1)[0]), f"{p.name} loads something from the network"
        assert 'aria-current="page"' in h and "In&nbsp;[" not in h and "jp-InputPrompt" not in h, p.name


@needs_browser
def test_every_page(site, browser, capsys):
    "Every page loads in the frame, with no broken link or image, no raw math, prompt, directive, table or path."
    out, pages, _ = site
    names = {p.name for p in pages}
    assert {"index.html", "results.html", "02_preprocess.html"} <= names
    assert {f"{p.stem}.html" for p in (ROOT/"nbs").glob("*.ipynb")} <= names
    problems, t = [], time.time()
    for page in sorted(pages):
        browser.get(page.as_uri())
        mathed = browser.execute_async_script(_WAIT_MATH)
        f = browser.execute_script(_PAGE_FACTS)
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        def bad(msg): problems.append(f"{page.name}: {msg}")
        if not f["h1"].strip(): bad("no title")
        if errors: bad(f"console errors {errors}")
        if mathed not in ("no math", "typeset"): bad(f"MathJax: {mathed}")
        if f["badImages"]: bad(f"images not loaded: {f['badImages']}")
        if f["remote"]: bad(f"loaded from the network: {f['remote']}")
        if f["active"] != [page.name]: bad(f"sidebar marks {f['active']} as current")
        if f["h2"] and not f["toc"]: bad("headings but no table of contents")
        if "$$" in f["prose"]: bad("raw $$ math")
        if re.search(r"\b(In|Out)\s*\[\s*\d*\s*\]:", f["shown"]): bad("In/Out prompts")
        if "#|" in f["shown"]: bad("#| directives shown")
        if re.search(r"\|\s*-{3,}\s*\|", f["shown"]): bad("a Markdown table shown as text")
        for frag in ("IProgress", "it/s]", "TqdmWarning", str(ROOT), "/tmp/"):
            if frag in f["shown"]: bad(f"shows {frag!r}")
        for href in f["links"]:
            u = urlparse(href)
            if u.scheme != "file": continue
            target = Path(unquote(u.path))
            if not target.exists(): bad(f"broken link {href}")
            elif u.fragment and target.suffix == ".html" and unquote(u.fragment) not in _ids(target): bad(f"broken anchor {href}")
    with capsys.disabled(): print(f"\ndocs: {len(pages)} pages checked in Chromium in {time.time() - t:.1f} s")
    assert not problems, "\n".join(problems)


@needs_browser
def test_cleaned_outputs(site, browser):
    "The noisy cell of 02_preprocess shows its table as a table, its figure, and its paths without the machine's folders."
    out, _, _ = site
    browser.get((out/"02_preprocess.html").as_uri())
    cells = browser.execute_script("""return Array.from(document.querySelectorAll('main table')).map(t => t.innerText)""")
    assert any("canary split" in c and "84" in c for c in cells), cells
    text = browser.execute_script("return document.querySelector('main').innerText")
    assert "…/in/scene.png" in text and "runs/smoke/tables/table_check.md" in text
    assert browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth === 96).length") >= 1


@needs_browser
def test_search_finds_preprocessing(site, browser):
    "Typing 'refined Lee' in the sidebar's search box lists the preprocessing page; following the hit opens it."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    out, _, _ = site
    browser.get((out/"index.html").as_uri())
    box = browser.find_element(By.ID, "search-input")
    box.send_keys("refined Lee")
    WebDriverWait(browser, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results a"))
    hits = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#search-results a")]
    assert any("02_preprocess.html" in h for h in hits), hits
    next(a for a in browser.find_elements(By.CSS_SELECTOR, "#search-results a") if "02_preprocess.html" in a.get_attribute("href")).click()
    WebDriverWait(browser, 5).until(lambda d: "02_preprocess.html" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, ".sidebar a.active").get_attribute("href").endswith("02_preprocess.html")
    box = browser.find_element(By.ID, "search-input")
    box.send_keys("zzqx-no-such-word")
    WebDriverWait(browser, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li.none"))


@needs_browser
def test_results_page(site, browser, capsys):
    "Every table and figure of paper_figures/ is on the results page, figures loaded, each linked to a notebook page."
    out, _, figs = site
    browser.get((out/"results.html").as_uri())
    f = browser.execute_script("""
      const main = document.querySelector('main');
      return {imgs: Array.from(main.querySelectorAll('img')).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
              tables: main.querySelectorAll('table').length,
              sections: Array.from(main.querySelectorAll('h3')).map(h => {
                  let links = [], e = h.nextElementSibling;
                  while (e && e.tagName !== 'H3' && e.tagName !== 'H2') { links.push(...Array.from(e.querySelectorAll('a')).map(a => a.getAttribute('href'))); e = e.nextElementSibling; }
                  return [h.textContent, links]; })};""")
    want_figs = sorted(p.name for p in figs.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif"))
    assert sorted(Path(s).name for s, _ in f["imgs"]) == want_figs
    assert all(ok for _, ok in f["imgs"]), f["imgs"]
    stems = {p.stem for p in figs.iterdir() if p.suffix.lower() in (".md", ".csv") and p.name.lower() != "readme.md"
             and (p.suffix.lower() == ".csv" or re.search(r"^\s*\|?\s*:?-{3,}:?\s*\|", p.read_text(encoding="utf-8"), re.M))}
    assert f["tables"] >= len(stems), (f["tables"], stems)
    for title, links in f["sections"]:
        made = [h for h in links if re.fullmatch(r"\d+[a-z]?_\w+\.html", h or "")]
        assert made, f"{title!r} links no notebook: {links}"
    shots = [_shot(browser, "results.png")]
    browser.get((out/"index.html").as_uri())
    shots.insert(0, _shot(browser, "index.png"))
    assert all(s.stat().st_size > 10_000 for s in shots)
    with capsys.disabled(): print(f"\ndocs: screenshots {', '.join(map(str, shots))}")
