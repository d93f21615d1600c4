"""The decoding methods against Fast-dLLM's threshold rule on a task where they differ (issue 13).

    python benchmarks/methods_sweep.py samples/checkpoints/carry-tiny [--task carry_chain] [--n 200] \
        [--threads 2] [--backend ort|torch] [--provider cpu|cuda] [--out docs/decoding_methods] [--quick]

Exports the checkpoint to ONNX (fp32, a temporary folder) unless ``--backend torch``, then decodes the
held-out prompts of samples/evaluate_tiny.py (``make_examples(n, seed=12345, task)``; ``--task`` defaults to
``carry_chain`` for a checkpoint trained on ``carry``, else its training task) with every method and knob of
METHODS below, and reports per
setting: exact match, tokens per forward (per sequence, every forward of the request counted), NFE (forwards
per request), query rows computed per forward and per sequence (the compute a cache saves; a FreeDave forward
counts its drafts' rows), for a cached decode the share of prompts with the tokens of the same decode without
the cache's approximation ("= exact"), tokens/s (generated tokens, EOS padding included, per second of wall time).
Writes OUT.json, OUT.md (the table), OUT.png (accuracy vs tokens per forward, one curve per decoding method) and
OUT_cache.png (the cache-refresh policies: accuracy vs rows computed per sequence). ``--only`` / ``--methods``
run some settings and add them to an existing OUT.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate  # noqa: E402
from dllm_trt.runtime.settings import folder_generation_defaults  # noqa: E402
from dllm_trt.tasks import exact_match, make_examples  # noqa: E402

EVAL_SEED = 12345

# method -> list of knob settings (GenerationConfig fields); every setting decodes the same prompts
METHODS: dict[str, list[dict]] = {
    "low_confidence (LLaDA schedule)": [dict(strategy="low_confidence", steps=k) for k in (0, 20, 10, 5)],
    "threshold (Fast-dLLM)": [dict(strategy="threshold", threshold=t) for t in
                              (0.99999, 0.9999, 0.9998, 0.9997, 0.9996, 0.9995, 0.999, 0.99, 0.95, 0.9, 0.7, 0.5)],
    "factor (Fast-dLLM)": [dict(strategy="factor", factor=f) for f in (0.0001, 0.001, 0.01, 0.1, 1.0)],
    "hierarchy (dInfer)": [dict(strategy="hierarchy", threshold=t, low_threshold=lo)
                           for t in (0.99999, 0.9999, 0.999) for lo in (0.999, 0.9)]
                          + [dict(strategy="hierarchy", threshold=t, low_threshold=0.9) for t in (0.9998, 0.9997, 0.9995)],
    "credit (dInfer)": [dict(strategy="credit", threshold=t) for t in
                        (0.99999, 0.9999, 0.9998, 0.9997, 0.9995, 0.999, 0.99, 0.9)],
    "local_leap (LocalLeap)": [dict(strategy="local_leap", threshold=t, relaxed_threshold=r, radius=rad)
                               for t, r in ((0.99999, 0.9999), (0.9999, 0.9995), (0.9999, 0.999), (0.9999, 0.99))
                               for rad in (1, 2, 4)],
    "sched (SchED)": [dict(strategy="sched", sched_high=h, sched_low=lo, sched_shape=shape)
                      for shape in ("linear", "cosine", "exp")
                      for h, lo in ((15.5, 12.0), (15.0, 10.0), (14.0, 8.0), (12.0, 6.0), (10.0, 4.0))],
    "freedave (FreeDave)": [dict(strategy="freedave", draft_steps=d) for d in (2, 4, 8, 16)],
}
# Cache-refresh policies (runtime/cache_refresh.py), each on Fast-dLLM's threshold rule at two thresholds: the
# parallel setting that is exact without a cache (0.9998) and a looser one (0.99). Fast-dLLM's own caches refresh
# at every block; dLLM-Cache's schedule replaces that on the dual cache of blocks of 8 and 4; Elastic-Cache's
# window slides over the whole answer (one block of 40, as upstream).
TAUS = (0.9998, 0.99)
CACHE_METHODS: dict[str, list[dict]] = {
    "Fast-dLLM caches (none/dual/prefix)": [dict(strategy="threshold", threshold=t, cache=c, block_length=bl)
                                            for t in TAUS for bl in (40, 8, 4) for c in ("none", "dual", "prefix")],
    "dllm_cache (dLLM-Cache)": [dict(strategy="threshold", threshold=t, cache="dual", block_length=bl,
                                     cache_refresh="dllm_cache", dllm_prompt_interval=kp, dllm_response_interval=kr,
                                     dllm_refresh_ratio=rho)
                                for t in TAUS for bl in (8, 4)
                                for kp, kr, rho in ((100, 7, 0.25), (100, 7, 0.0), (100, 2, 0.25), (100, 100, 0.25),
                                                    (100, 100, 0.0), (1, 7, 0.25))],
    "elastic (Elastic-Cache)": [dict(strategy="threshold", threshold=t, cache="dual", block_length=40,
                                     cache_refresh="elastic", elastic_window=win, elastic_gamma=gm)
                                for t in TAUS for win in (4, 16) for gm in (0.0, 0.9, 0.999, 0.9999, 2.0)]
                               + [dict(strategy="threshold", threshold=t, cache="prefix", block_length=40,
                                       cache_refresh="elastic", elastic_window=16, elastic_gamma=0.999) for t in TAUS],
}
METHODS.update(CACHE_METHODS)
# steps 0 stands for the checkpoint's gen_length (one token per step); every other setting keeps that schedule
QUICK = {k: v[:: max(1, len(v) // 2)] for k, v in METHODS.items()}


SHORT = {"block_length": "block", "dllm_prompt_interval": "K_p", "dllm_response_interval": "K_r",
         "dllm_refresh_ratio": "rho", "elastic_window": "window", "elastic_gamma": "gamma"}


def knob_label(s: dict) -> str:
    """The settings as printed (the method's name says the strategy and the refresh policy)."""
    return " ".join(f"{SHORT.get(k, k)}={v}" for k, v in s.items()
                    if k not in ("strategy", "cache_refresh") and not (k == "steps" and v == 0)) or "-"


def exact_version(setting: dict) -> dict | None:
    """The same decode without the cache's approximation (None: it has none): no cache for Fast-dLLM's caches
    and dLLM-Cache; Elastic-Cache refreshing every step (gamma > 1: a full forward per step, same window)."""
    if setting.get("cache", "none") == "none":
        return None
    if setting.get("cache_refresh") == "elastic":
        return dict(setting, elastic_gamma=2.0) if setting["elastic_gamma"] <= 1 else None
    return {k: v for k, v in setting.items() if not k.startswith(("cache", "dllm_"))}


def decode_all(backend, tok, exs, base: dict, setting: dict, batch: int):
    values = dict(base, **setting)
    if not values.get("steps"):
        values["steps"] = values["gen_length"]
    g = GenerationConfig(**values)
    tokens, tpf_sum, forwards, rows, decoded, t0 = [], 0.0, 0, 0, 0, time.perf_counter()
    for i in range(0, len(exs), batch):
        chunk = exs[i: i + batch]
        r = generate(backend, [tok.encode(e.prompt) for e in chunk], g)
        tokens += r.tokens
        tpf_sum += r.tokens_per_forward * len(chunk)
        forwards += sum(sum(s.live[b] for s in r.steps) for b in range(len(chunk)))
        rows += sum(s.rows[b] for s in r.steps for b in range(len(chunk)) if s.live[b])
        decoded += r.decoded_tokens
    wall = time.perf_counter() - t0
    return tokens, {"tokens_per_forward": tpf_sum / len(exs), "nfe": forwards / len(exs),
                    "rows_per_forward": rows / max(forwards, 1), "rows_per_sequence": rows / len(exs),
                    "tokens_per_s": decoded / wall, "wall_s": wall}


_EXACT: dict[str, list] = {}


def run_setting(backend, tok, exs, base: dict, setting: dict, batch: int) -> dict:
    """Exact match, tokens per forward, NFE, query rows computed (per forward and per sequence: the compute a
    cache saves), tokens/s; for a cached decode also the share of prompts whose tokens equal the exact decode's."""
    tokens, m = decode_all(backend, tok, exs, base, setting, batch)
    m["exact_match"] = exact_match([tok.decode(t) for t in tokens], exs)
    ref = exact_version(setting)
    if ref is not None:
        key = json.dumps(ref, sort_keys=True)
        if key not in _EXACT:
            _EXACT[key] = decode_all(backend, tok, exs, base, ref, batch)[0]
        m["same_as_exact"] = sum(a == b for a, b in zip(tokens, _EXACT[key])) / len(exs)
    return m


def pareto_plot(rows: list[dict], path: Path, title: str) -> None:
    """Exact match vs tokens per forward, one curve per method (its Pareto front; the other settings faint);
    left the whole range, right zoomed on the settings within 10 points of the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["method"] not in CACHE_METHODS]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    best = max(100 * r["exact_match"] for r in rows)
    for zoom, ax in enumerate(axes):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["tokens_per_forward"], 100 * r["exact_match"]) for r in rows if r["method"] == method)
            if zoom:
                pts = [p for p in pts if p[1] >= best - 10]
            if not pts:
                ax.plot([], [], "-o", label=method)
                continue
            front, top = [], -1.0  # no other setting of the method both faster and more accurate
            for x, y in sorted(pts, key=lambda p: -p[0]):
                if y > top:
                    front.append((x, y))
                    top = y
            front.sort()
            (line,) = ax.plot([p[0] for p in front], [p[1] for p in front], "-", marker="o", label=method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.3, color=line.get_color())
        ax.set_xlabel("tokens per forward")
        ax.set_ylabel("exact match (%)")
        ax.grid(alpha=0.3)
        ax.set_title("within 10 points of the best" if zoom else "all settings", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cache_plot(rows: list[dict], path: Path, title: str) -> None:
    """The cache policies: exact match vs query rows computed per sequence (log scale), one marker style per
    method, one colour per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["method"] in CACHE_METHODS and "rows_per_sequence" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = dict(zip(CACHE_METHODS, "osD"))
    taus = sorted({r["knobs"].split()[0] for r in rows})
    colours = dict(zip(taus, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for method in CACHE_METHODS:
        for t in taus:
            pts = [(r["rows_per_sequence"], 100 * r["exact_match"]) for r in rows
                   if r["method"] == method and r["knobs"].split()[0] == t]
            if pts:
                ax.plot(*zip(*pts), markers[method], color=colours[t], alpha=0.75, label=f"{method}, {t}")
    ax.set_xscale("log")
    ax.set_xlabel("query rows computed per sequence (log)")
    ax.set_ylabel("exact match (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def fmt(r: dict, key: str, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return f"{scale * r[key]:{spec}}{suffix}" if key in r else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="ort", choices=["ort", "torch"])
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cache", default=None, help="cache mode (default: the checkpoint's)")
    ap.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")
    ap.add_argument("--quick", action="store_true", help="about half of the knob settings")
    ap.add_argument("--task", help="prompts of this task of dllm_trt.tasks (default: see above)")
    ap.add_argument("--methods", nargs="+", metavar="METHOD",
                    help="run only the settings of these methods (the names before ' (', e.g. dllm_cache elastic) and "
                         "add them to OUT.json as --only does")
    ap.add_argument("--only", nargs="+", metavar="KNOBS",
                    help="run only these settings, as printed (e.g. 'threshold=0.9997'), and add them to OUT.json "
                         "(same task, n and device), then rewrite OUT.md and OUT.png from all its rows")
    args = ap.parse_args()

    ckpt = args.checkpoint
    train = json.loads((ckpt / "train_metrics.json").read_text())
    task = args.task or {"carry": "carry_chain"}.get(train.get("task", "mix"), train.get("task", "mix"))
    exs = make_examples(args.n, EVAL_SEED, None if task == "mix" else task)
    base = folder_generation_defaults(ckpt)
    base.setdefault("steps", base.get("gen_length"))
    if args.cache:
        base["cache"] = args.cache
    tok = TextTokenizer(ckpt)
    tmp = tempfile.TemporaryDirectory()
    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
        from dllm_trt.runtime.backends import load_backend

        backend = load_backend("torch", str(ckpt), device="cuda" if args.provider == "cuda" else "cpu")
        device = f"torch {args.provider}"
    else:
        from dllm_trt.export import export_onnx
        from dllm_trt.runtime.backends import load_backend

        art = Path(tmp.name) / "onnx"
        export_onnx(ckpt, art, progress=False, log=lambda s: None)
        backend = load_backend("ort", str(art), provider=args.provider, intra_op_threads=args.threads)
        device = f"ORT {args.provider}"
    device += f" ({platform.machine()}, {args.threads} threads)" if args.provider == "cpu" else ""
    rows, order = [], []
    merge = bool(args.only or args.methods)
    if merge:
        old = json.loads(args.out.with_suffix(".json").read_text())
        rows = old["rows"]
    for method, settings in (QUICK if args.quick else METHODS).items():
        for s in settings:
            order.append((method, knob_label(s)))
            if args.only and knob_label(s) not in args.only:
                continue
            if args.methods and method.split(" (")[0] not in args.methods:
                continue
            rows = [r for r in rows if (r["method"], r["knobs"]) != (method, knob_label(s))]  # a re-run replaces
            m = run_setting(backend, tok, exs, base, s, args.batch)
            rows.append({"method": method, "strategy": s["strategy"], "knobs": knob_label(s), **m})
            same = f"  = exact {100 * m['same_as_exact']:5.1f}%" if "same_as_exact" in m else ""
            print(f"{method:24s} {knob_label(s):52s} EM {100 * m['exact_match']:5.1f}%  "
                  f"tok/fwd {m['tokens_per_forward']:5.2f}  NFE {m['nfe']:5.1f}  rows/fwd {m['rows_per_forward']:6.1f}  "
                  f"tok/s {m['tokens_per_s']:8.0f}{same}", flush=True)
    meta = {"checkpoint": ckpt.name, "task": task, "n": args.n, "batch": args.batch, "device": device,
            "date": time.strftime("%Y-%m-%d"), "base_settings": base}
    rank = {key: i for i, key in enumerate(order)}
    rows.sort(key=lambda r: rank.get((r["method"], r["knobs"]), len(rank)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        lines = ["| method | knobs | exact match | tokens/forward | NFE | rows/forward | rows/sequence | = exact "
                 "| tokens/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['knobs']} | {100 * r['exact_match']:.1f}% | {r['tokens_per_forward']:.2f} | "
                  f"{r['nfe']:.1f} | {fmt(r, 'rows_per_forward', '.1f')} | {fmt(r, 'rows_per_sequence', '.0f')} | "
                  f"{fmt(r, 'same_as_exact', '.1f', 100, '%')} | {r['tokens_per_s']:.0f} |" for r in rows]
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        title = f"{ckpt.name} ({task}), {args.n} held-out prompts, {device}, {meta['date']}"
        pareto_plot(rows, args.out.with_suffix(".png"), title)
        cache_plot(rows, args.out.with_name(args.out.name + "_cache.png"), title)
    tmp.cleanup()


if __name__ == "__main__":
    main()
