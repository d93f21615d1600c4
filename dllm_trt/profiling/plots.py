"""PNG plots of a profile report (matplotlib, Agg backend; ``pip install dllm-trt[profile]``).

Each ``*_figure`` function returns a matplotlib Figure (tests read its axes); :func:`write_plots`
saves them. The per-step plots show the first request of the marked setting.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_file
from ..errors import DllmError

PART_COLORS = {"model": "#4C72B0", "cache": "#DD8452", "unmask": "#55A868", "host": "#8C8C8C"}
KIND_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise DllmError("--plots needs matplotlib: pip install 'dllm-trt[profile]' (or pip install matplotlib)") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _marked_run(report: dict) -> dict:
    i = report["sweep"]["marked"]
    if i is None:
        raise DllmError("no setting ran: nothing to plot")
    return report["runs"][i]


def latency_per_step_figure(report: dict):
    """Stacked bars, one per step of the first request: model forward, cache update, unmask, host overhead."""
    plt = _pyplot()
    run = _marked_run(report)
    steps = run["trace"][0]["steps"]
    x = list(range(1, len(steps) + 1))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(steps) + 2), 4))
    bottom = [0.0] * len(steps)
    for part, name in (("model", "model forward"), ("cache", "cache update"), ("unmask", "unmask / sampling"),
                       ("host", "host overhead")):
        vals = [s[f"{part}_ms"] for s in steps]
        ax.bar(x, vals, bottom=bottom, color=PART_COLORS[part], label=name, width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals)]
    _integer_steps(ax)
    ax.set_xlabel("step (forward call)")
    ax.set_ylabel("time (ms)")
    ax.set_title(f"Latency per step ({run['label']}, request 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tokens_per_step_figure(report: dict):
    """Bars of tokens unmasked by each step of the first request, coloured by forward kind."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    run = _marked_run(report)
    steps = run["trace"][0]["steps"]
    kinds = list(dict.fromkeys(s["kind"] for s in steps))
    color = {k: KIND_COLORS[i % len(KIND_COLORS)] for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(steps) + 2), 4))
    x = list(range(1, len(steps) + 1))
    ax.bar(x, [s["unmasked"] for s in steps], color=[color[s["kind"]] for s in steps], width=0.8)
    _integer_steps(ax)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (forward call)")
    ax.set_ylabel("tokens unmasked")
    ax.set_title(f"Tokens unmasked per step ({run['label']}, request 1)")
    ax.legend(handles=[Patch(color=color[k], label=k) for k in kinds], title="forward kind", fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(report: dict):
    """Per setting: mean latency per request as bars (the marked setting in red, tokens/s written on
    each bar) and exact match as a line on a second axis. The marking rule uses the same latency."""
    plt = _pyplot()
    runs = [(i, r) for i, r in enumerate(report["runs"]) if r["status"] == "ok"]
    marked = report["sweep"]["marked"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(runs) + 2.5), 4.8))
    x = list(range(len(runs)))
    bars = ax.bar(x, [r["latency_ms_per_request"]["mean"] for _, r in runs], width=0.6,
                  color=["#C44E52" if i == marked else "#4C72B0" for i, _ in runs])
    ax.bar_label(bars, labels=[f"{r['tokens_per_second']:.0f} tok/s" for _, r in runs], fontsize=7, padding=2)
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for _, r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("setting")
    ax.set_ylabel("latency per request (ms, mean)")
    ax.margins(y=0.12)
    if runs and all(r["exact_match"] is not None for _, r in runs):
        acc = ax.twinx()
        acc.plot(x, [r["exact_match"] * 100 for _, r in runs], "o-", color="black", label="exact match")
        acc.set_ylim(0, 105)
        acc.set_ylabel("exact match (%)")
        ax.set_title("Speed and accuracy per setting (red: fastest within 1 point of the best)")
    else:
        ax.set_title("Speed per setting (red: fastest; no accuracy measured)")
    fig.tight_layout()
    return fig


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


FIGURES = {"latency_per_step": latency_per_step_figure, "tokens_per_step": tokens_per_step_figure,
           "sweep": sweep_figure}


def write_plots(report: dict, out_dir: str | Path) -> dict[str, str]:
    """Save every figure as ``OUT_DIR/NAME.png``; returns {name: path}."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make in FIGURES.items():
        fig = make(report)
        path = out / f"{name}.png"
        write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        paths[name] = str(path)
    return paths
