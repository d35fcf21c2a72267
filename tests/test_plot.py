"""Loss-curve plots from the files a run writes, and the scaling-law figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt.scaling import plot, collect as scaling

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(run_dir: Path, n_layer: int, lr: float, iters: int = 20, summary: bool = True) -> Path:
    """A run directory as training leaves it: metrics.jsonl (+ summary.json when it finished)."""
    run_dir.mkdir(parents=True)
    lines = []
    for it in range(1, iters + 1):
        loss = 4.0 / (1 + 0.1 * it * n_layer)
        lines.append(dict(kind="train", iter=it, tokens=it * 512, loss=loss, lr=lr, ms_per_iter=3.0,
                          tokens_per_s=1.7e5, mfu=None, time_s=it * 0.003))
        if it % 5 == 0:
            lines.append(dict(kind="eval", iter=it, tokens=it * 512, train_loss=loss,
                              val_loss=loss + 0.05, time_s=it * 0.003))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    if summary:
        config = dict(model=dict(n_layer=n_layer, n_head=2, n_embd=32), optim=dict(lr=lr),
                      data=dict(name="tiny"), seed=0)
        (run_dir / "summary.json").write_text(json.dumps(dict(
            status="finished", tokens=iters * 512, flops_per_token=1000 * n_layer, config=config)))
    return run_dir


def test_plot_run_writes_loss_png(tmp_path):
    run = fake_run(tmp_path / "run", n_layer=2, lr=1e-3)
    out = plot.plot_run(run)
    assert out == run / "loss.png" and out.read_bytes()[:8] == PNG
    curves = plot.load_curves(run)
    assert len(curves["train_x"]) == 20 and curves["val_x"].tolist() == [2560, 5120, 7680, 10240]
    assert plot.load_curves(run, x="flops")["val_x"][0] == 2560 * 2000
    assert plot.load_curves(run, x="iter")["train_x"][-1] == 20


def test_plot_run_fails_cleanly_without_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match="no train or eval lines"):
        plot.plot_run(run)  # no metrics.jsonl at all
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no train or eval lines"):
        plot.plot_run(run)
    (run / "metrics.jsonl").write_text('{"kind": "train", "iter": 1, "tok')  # died mid-write
    with pytest.raises(ValueError, match="no train or eval lines"):
        plot.plot_run(run)
    assert not (run / "loss.png").exists()


def test_plot_run_with_only_train_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(dict(kind="train", iter=1, tokens=64, loss=4.0)) + "\n")
    assert plot.plot_run(run, out=tmp_path / "x" / "y.png").read_bytes()[:8] == PNG


def test_labels_name_what_differs(tmp_path):
    runs = [fake_run(tmp_path / "a", 2, 1e-3), fake_run(tmp_path / "b", 4, 1e-3),
            fake_run(tmp_path / "c", 4, 1e-2)]
    assert plot.run_labels(runs) == ["n_layer=2 lr=0.001", "n_layer=4 lr=0.001", "n_layer=4 lr=0.01"]
    assert plot.run_labels(runs[:1]) == ["a"]


def legend_texts(fig) -> list[str]:
    legends = fig.legends or [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def run_entries(fig) -> list[str]:
    """The legend's run labels (without the entry saying which line is train, which validation)."""
    return [t for t in legend_texts(fig) if not t.startswith("(")]


def test_plot_runs_overlays_a_sweep_and_skips_what_it_cannot_plot(tmp_path):
    runs = [fake_run(tmp_path / "0_a", 2, 1e-3), fake_run(tmp_path / "1_b", 4, 1e-3),
            fake_run(tmp_path / "2_c", 4, 1e-2, summary=False)]
    fig = plot.plot_runs(runs, out=None)
    assert len(run_entries(fig)) == 3
    with pytest.warns(UserWarning, match="no flops_per_token"):
        fig = plot.plot_runs(runs, out=None, x="flops")
    assert len(run_entries(fig)) == 2
    with pytest.raises(ValueError, match="x must be one of"):
        plot.plot_runs(runs, out=None, x="time")


def test_cli_plots_a_sweep(tmp_path):
    sweep = tmp_path / "sweeps" / "lr"
    for i, lr in enumerate([1e-3, 3e-3, 1e-2]):
        fake_run(sweep / f"{i}_optim.lr={lr}", 2, lr)
    proc = subprocess.run([sys.executable, "-m", "nanogpt.plot", str(sweep), "--x", "flops"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "loss.png").read_bytes()[:8] == PNG
    proc = subprocess.run([sys.executable, "-m", "nanogpt.plot", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "no such directory" in proc.stderr


def test_scaling_figures(tmp_path):
    law = scaling.chinchilla_law()
    data = scaling.fit_data(scaling.load_runs([scaling.synthetic_sweep(tmp_path / "sweep", law=law)]))
    N, D, C, L = data["N"], data["D"], data["C"], data["L"]
    iso = scaling.isoflop_fit(N, D, C, L)
    assert plot.plot_isoflops(iso, out=tmp_path / "iso.png").read_bytes()[:8] == PNG
    assert plot.plot_approach3(N, D, L, law, out=tmp_path / "a3.png").read_bytes()[:8] == PNG
    fig = plot.plot_loss_vs_flops(C, L, N, fit=law)
    frontier = fig.axes[0].lines[0]  # a step through the frontier runs, in increasing FLOPs
    assert np.all(np.diff(frontier.get_xdata()) >= 0) and np.all(np.diff(frontier.get_ydata()) <= 0)
    assert frontier.get_ydata()[-1] == L.min()
