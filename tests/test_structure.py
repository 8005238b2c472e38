"The project's shape (issue 12): one entry point per stage, one command wrapper, each constant defined once, fixtures out of production code."
import ast, importlib, re
from pathlib import Path
import pytest
import sarlang_nb
from sarlang_nb.reproduce import stage_notebooks

PKG = Path(sarlang_nb.__file__).parent
MODULES = sorted(p for p in PKG.glob("*.py") if not p.name.startswith("_"))

def _tree(p): return ast.parse(p.read_text(encoding="utf-8"))

def _module_of(nb):
    "The module a notebook exports to (its `#| default_exp`), or None."
    import json
    for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        m = re.search(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"]))
        if m: return m.group(1)

@pytest.mark.parametrize("nb", [p.name for p in stage_notebooks()])
def test_every_stage_exports_run_stage(nb):
    nbp = next(p for p in stage_notebooks() if p.name == nb)
    mod = importlib.import_module(f"sarlang_nb.{_module_of(nbp)}")
    assert callable(getattr(mod, "run_stage", None)), f"{nb} ({mod.__name__}) exports no run_stage(rd, **params)"
    assert "rd" in mod.run_stage.__code__.co_varnames[:1], f"{mod.__name__}.run_stage's first parameter is not rd"

def test_argparse_only_in_cli():
    "Commands are built by `sarlang_nb.cli`; no module writes an argparse parser of its own."
    bad = [p.name for p in MODULES if p.name != "cli.py" and re.search(r"\bArgumentParser\(", p.read_text(encoding="utf-8"))]
    assert not bad, f"hand-written argparse parsers in {bad}"

def _error_wrappers(tree):
    "`except SarlangError` handlers that print `prog: error: ...` themselves (what `cli.run_command` does once)."
    for n in ast.walk(tree):
        if isinstance(n, ast.ExceptHandler) and n.type is not None and "SarlangError" in ast.unparse(n.type):
            if any(isinstance(c, ast.Call) and ast.unparse(c.func) == "print" and ": error" in ast.unparse(c) for b in n.body for c in ast.walk(b)):
                yield n.lineno

def test_no_hand_written_error_wrapper():
    "A command reports a `SarlangError` through `cli.run_command`, not a copy of its own."
    bad = {p.name: list(_error_wrappers(_tree(p))) for p in MODULES if p.name != "cli.py"}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"error wrappers written by hand (module: lines): {bad}"

@pytest.mark.parametrize("name", ["APPLICATIONS", "SARDET_CLASSES", "POSITIONS", "CLASS_PREFIX", "POSITION_PREFIX"])
def test_constant_defined_once(name):
    where = [p.name for p in MODULES for n in _tree(p).body
             if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]
    assert len(where) == 1, f"{name} is defined in {where}"

def test_production_modules_do_not_import_testing():
    "Fixtures live in `sarlang_nb.testing`; production code never imports it at module level."
    bad = []
    for p in MODULES:
        if p.name == "testing.py": continue
        for n in _tree(p).body:
            if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("testing") and n.level >= 1: bad.append(p.name)
            if isinstance(n, ast.ImportFrom) and n.module == "sarlang_nb.testing": bad.append(p.name)
    assert not bad, f"module-level imports of sarlang_nb.testing in {bad}"

@pytest.mark.parametrize("pattern,why", [
    (r'default_run_dir\(\)\.absolute\(\)', "use RunDir.is_default"),
    (r'\.get\("model_paths"\)', "use RunDir.model_path(name)"),
    (r'/\s*"Text"\s*/\s*"records"', "use RunDir.records"),
])
def test_run_accessors_used(pattern, why):
    bad = [p.name for p in MODULES if p.name != "core.py" and re.search(pattern, p.read_text(encoding="utf-8"))]
    assert not bad, f"{pattern!r} written by hand in {bad}: {why}"
