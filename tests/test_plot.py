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
    assert proc.returncode == 2 and "no such directory" in proc.stderr


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


# --------------------------------------------------------------------------------------------
# Comparing recipes (issue 25, item 3): a short legend, a normal figure, log FLOPs from the start
# --------------------------------------------------------------------------------------------
def recipe_run(run_dir: Path, recipe: str) -> Path:
    """A run as training writes it (an eval at iteration 0, at 0 tokens), whose config differs
    from the other recipe's in 11 keys, as gpt2 and modern do."""
    run_dir.mkdir(parents=True)
    modern = recipe == "modern"
    lines = []
    for it in range(0, 101, 10):
        loss = 1.3 + 3.0 / (1 + (1.2 if modern else 0.9) * it / 20)
        lines.append(dict(kind="train", iter=it, tokens=it * 4096, loss=loss))
        if it % 50 == 0:
            lines.append(dict(kind="eval", iter=it, tokens=it * 4096, val_loss=loss + 0.05))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    model = {f"option_{i}": (modern and i % 2) or i for i in range(16)}
    config = dict(model=dict(n_layer=2, n_embd=64, **model), optim=dict(name="muon" if modern else "adamw",
                  lr=0.02 if modern else 3e-3, weight_decay=0.0 if modern else 0.1), variant=recipe, seed=0)
    (run_dir / "summary.json").write_text(json.dumps(dict(status="finished", tokens=100 * 4096,
                                                          flops_per_token=6e5, config=config)))
    return run_dir


def plot_cli(*args):
    return subprocess.run([sys.executable, "-m", "nanogpt.plot", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_recipe_overlay_has_short_labels_and_a_normal_width(tmp_path):
    a = recipe_run(tmp_path / "0_+variant=gpt2,experiment=scaling-variants_tiny,model.n_embd=64", "gpt2")
    b = recipe_run(tmp_path / "0_+variant=modern,experiment=scaling-variants_tiny,model.n_embd=64", "modern")
    proc = plot_cli(a, b, "--out", tmp_path / "cmp.png")
    assert proc.returncode == 0, proc.stderr
    assert "collapsed" not in proc.stderr  # was: a 3,777-pixel figure, axes collapsed to a sliver
    width, height = png_size(tmp_path / "cmp.png")
    assert width < 1000 and height < 1000, (width, height)
    labels = run_entries(plot.plot_runs([a, b], out=None))
    assert labels == ["variant=gpt2 optim=adamw +9 more", "variant=modern optim=muon +9 more"]
    assert all(len(label) <= plot.LABEL_CHARS for label in labels)


def test_label_option_names_each_run(tmp_path):
    a, b = recipe_run(tmp_path / "a", "gpt2"), recipe_run(tmp_path / "b", "modern")
    proc = plot_cli(a, b, "--label", "GPT-2", "--label", "modern", "--title", "recipes", "--out", tmp_path / "l.png")
    assert proc.returncode == 0, proc.stderr
    fig = plot.plot_runs([a, b], out=None, labels=["GPT-2", "modern"], title="recipes")
    assert run_entries(fig) == ["GPT-2", "modern"] and fig.axes[0].get_title() == "recipes"
    proc = plot_cli(a, b, "--label", "GPT-2", "--out", tmp_path / "bad.png")
    assert proc.returncode == 2 and "error: 1 --label for 2 runs" in proc.stderr
    assert not (tmp_path / "bad.png").exists()


def test_flops_axis_starts_at_the_first_positive_value_and_val_is_markers_and_lines(tmp_path):
    a, b = recipe_run(tmp_path / "a", "gpt2"), recipe_run(tmp_path / "b", "modern")
    ax = plot.plot_runs([a, b], out=None, x="flops").axes[0]
    first = 10 * 4096 * 6e5  # iteration 10: iteration 0 is at 0 FLOPs, which a log axis cannot show
    left = ax.get_xlim()[0]
    assert first / 1.5 < left < first, left  # was: the axis ran to ~0 and the curves were squeezed flat
    val = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(val) == 2 and all(line.get_linestyle() == "-" for line in val)
    assert all(np.all(line.get_xdata() > 0) and len(line.get_xdata()) == 2 for line in val)


def test_vector_output_on_request(tmp_path):
    run = recipe_run(tmp_path / "run", "gpt2")
    proc = plot_cli(run, "--format", "svg")
    assert proc.returncode == 0, proc.stderr
    assert b"<svg" in (run / "loss.svg").read_bytes()[:500]
    assert plot_cli(run, "--out", tmp_path / "a.pdf").returncode == 0
    assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    proc = plot_cli(run, "--out", tmp_path / "a.png", "--format", "pdf")
    assert proc.returncode == 2 and "--out" in proc.stderr and "disagree" in proc.stderr
    proc = plot_cli(run, "--out", tmp_path / "a.jpg")
    assert proc.returncode == 2 and "name the file with one of those suffixes" in proc.stderr


def overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Pairs of x tick labels whose drawn boxes overlap, on every axes of the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    pairs = []
    for ax in fig.axes:
        labels = [t for t in ax.xaxis.get_ticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        pairs += [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                  for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    return pairs


def test_log_tick_labels_never_overlap(tmp_path):
    # sizes over 0.9 decade: matplotlib labels the minor ticks too (2e4, 3e4, 4e4, ...), into each other
    law = scaling.chinchilla_law()
    data = scaling.fit_data(scaling.load_runs([scaling.synthetic_sweep(
        tmp_path / "sweep", law=law, budgets=(1e17, 3e17, 1e18), sizes_per_budget=5)]))
    data["N"] = 1.45e4 * (data["N"] / data["N"].min()) ** 0.45  # 1.45e4 .. 1.2e5, relabelled: the axis is what matters
    iso = scaling.isoflop_fit(data["N"], data["D"], data["C"], data["L"])
    assert overlapping_tick_labels(plot.plot_isoflops(iso)) == []
    from matplotlib.figure import Figure
    small = Figure(figsize=(6.5, 2.6), layout="constrained")  # two panels in a paper's column width
    assert overlapping_tick_labels(plot.plot_isoflops(iso, axes=small.subplots(1, 2))) == []
    assert overlapping_tick_labels(plot.plot_loss_vs_flops(data["C"], data["L"], data["N"])) == []
    runs = [recipe_run(tmp_path / "a", "gpt2"), recipe_run(tmp_path / "b", "modern")]
    assert overlapping_tick_labels(plot.plot_runs(runs, out=None, x="flops")) == []


def test_approach3_line_is_drawn_at_the_runs_own_flops(tmp_path):
    # the runs' recorded FLOPs count attention too (here 1.3 x 6ND, as in docs/scaling_demo); the fit
    # knows only 6ND. Drawn at 6ND the line fell below every run; at the runs' FLOPs it meets the
    # best run of each budget (a noise-free sweep whose sizes include the optimum's neighbourhood)
    law = scaling.chinchilla_law()
    data = scaling.fit_data(scaling.load_runs([scaling.synthetic_sweep(
        tmp_path / "sweep", law=law, budgets=(1e17, 1e18, 1e19), sizes_per_budget=21, noise=0.0)]))
    C = 1.3 * data["C"]
    fig = plot.plot_loss_vs_flops(C, data["L"], data["N"], fit=law, D=data["D"])
    line = next(l for l in fig.axes[0].get_lines() if l.get_linestyle() == "--")
    for budget in (1e17, 1e18, 1e19):
        at = np.interp(np.log(1.3 * budget), np.log(line.get_xdata()), line.get_ydata())
        best = data["L"][np.isclose(data["C"], budget, rtol=0.01)].min()
        assert at == pytest.approx(best, abs=2e-3), (budget, at, best)
    frontier = fig.axes[0].get_lines()[0]  # the best run per budget, joined: no vertical stairs
    assert len(frontier.get_xdata()) == 3 and np.all(np.diff(frontier.get_xdata()) > 0)
