import os, sys, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("SARLANG_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

def run_cli(name, *args, env=None, cwd=None, timeout=600):
    "Run a console command of the package; returns CompletedProcess (text)."
    exe = BIN/name
    cmd = [str(exe) if exe.exists() else name, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)

@pytest.fixture
def cli():
    return run_cli

@pytest.fixture
def shared_data():
    from sarlang_nb.core import shared_data as sd
    p = sd()
    if p is None: pytest.skip("../shared/data is not beside the checkout")
    return p


def stage_notebook(path, *sources):
    "Write a made-up stage notebook: a papermill `parameters` cell (run_dir, profile), then one code cell per source."
    import nbformat
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('run_dir = None\nprofile = "smoke"'); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, *[nbformat.v4.new_code_cell(s) for s in sources]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)
