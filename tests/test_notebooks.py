"""The notebooks run top to bottom (their own asserts check the numbers they show)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from nanogpt.scaling import collect as scaling

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "nanogpt-tests"


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernelspec running this interpreter: the installed "python3" spec launches whatever
    `python` is first on PATH, which need not be the environment the tests run in."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nanogpt tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def execute(name: str, kernel: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=240,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.get("name") == "stdout")


def test_transformer_sizing(kernel):
    out = stdout(execute("transformer_sizing.ipynb", kernel))
    assert "124,439,808" in out and "1,557,611,200" in out


def test_scaling_laws_on_a_synthetic_sweep(kernel, monkeypatch):
    monkeypatch.delenv("NANOGPT_SWEEP_DIR", raising=False)
    out = stdout(execute("scaling_laws.ipynb", kernel))
    assert "N_opt ~ C^0.49" in out and "truth: alpha=0.34" in out


def test_scaling_laws_on_a_given_sweep(kernel, monkeypatch, tmp_path):
    law = scaling.Approach3Fit(E=2.0, A=300.0, B=900.0, alpha=0.3, beta=0.36)
    sweep = scaling.synthetic_sweep(tmp_path / "sweeps" / "isoflop", law=law, noise=0.002, seed=3)
    monkeypatch.setenv("NANOGPT_SWEEP_DIR", str(sweep))
    out = stdout(execute("scaling_laws.ipynb", kernel))
    assert "28 of 28 runs are usable" in out and "truth:" not in out
