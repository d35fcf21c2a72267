"""bench/compare_variants.py takes what `scaling fit` takes: several run or sweep paths, CSVs,
symlinked runs; and says so when it finds no run (issue 25, item 7)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt.scaling import collect

REPO = Path(__file__).resolve().parent.parent
LAWS = {"gpt2": collect.Approach3Fit(E=2.0, A=300.0, B=900.0, alpha=0.32, beta=0.36),
        "modern": collect.Approach3Fit(E=1.9, A=300.0, B=700.0, alpha=0.32, beta=0.36)}


def compare(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "compare_variants.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """experiment=scaling/variants_tiny's layout: SWEEP/gpt2/<runs> and SWEEP/modern/<runs>."""
    for name, law in LAWS.items():
        collect.synthetic_sweep(tmp_path / "variants" / name, law=law, budgets=(1e17, 1e18), sizes_per_budget=5)
    return tmp_path / "variants"


def test_one_sweep_folder_as_before(sweep, tmp_path):
    proc = compare(sweep, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "found 20 runs (20 finished) in 2 recipes: gpt2 10, modern 10" in proc.stdout
    assert (tmp_path / "out" / "isoflops.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "out" / "runs.csv").read_text().splitlines()) == 21


def test_several_paths_a_csv_and_vector_output(sweep, tmp_path):
    collect.write_csv(collect.load_runs([sweep / "modern"]), tmp_path / "modern.csv")
    proc = compare(sweep / "gpt2", tmp_path / "modern.csv", "--out", tmp_path / "out", "--format", "svg")
    assert proc.returncode == 0, proc.stderr
    assert "in 2 recipes: gpt2 10, modern 10" in proc.stdout
    assert b"<svg" in (tmp_path / "out" / "isoflops.svg").read_bytes()[:500]


def test_symlinked_runs_are_followed(sweep, tmp_path):
    # a folder of links to chosen runs, by recipe: found 0 runs before (os.walk does not follow links)
    picked = tmp_path / "picked"
    for name in LAWS:
        (picked / name).mkdir(parents=True)
        for run in sorted((sweep / name).iterdir())[:5]:
            (picked / name / run.name).symlink_to(run, target_is_directory=True)
    (picked / "loop").symlink_to(picked, target_is_directory=True)  # a cycle is harmless
    proc = compare(picked, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "found 10 runs (10 finished) in 2 recipes: gpt2 5, modern 5" in proc.stdout
    assert len(collect.load_runs([picked])) == 10  # `scaling fit` follows them too


def test_no_runs_is_said_clearly(tmp_path):
    (tmp_path / "empty" / "gpt2").mkdir(parents=True)
    proc = compare(tmp_path / "empty", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: found 0 runs under {tmp_path / 'empty'}: a run is a directory holding")
    assert not (tmp_path / "out").exists()
    proc = compare(tmp_path / "missing")
    assert proc.returncode == 2 and "error: " in proc.stderr and "no such directory" in proc.stderr
