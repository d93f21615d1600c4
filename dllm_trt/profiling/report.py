"""The profile report as a terminal table (the same layout every time), JSON and CSV."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from ..atomic import write_file

PARTS = (("model_forward", "model forward"), ("cache_update", "cache update"), ("unmask", "unmask / sampling"),
         ("host_overhead", "host overhead"))


def _num(v, fmt: str = ".2f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, fmt)


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded to fixed column widths: readable in a terminal, pasteable into docs."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = [i > 0 for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def sweep_rows(report: dict) -> list[list[str]]:
    rows = []
    for i, run in enumerate(report["runs"]):
        mark = "*" if i == report["sweep"]["marked"] else " "
        name = f"{mark} {run['label']}"
        if run["status"] != "ok":
            rows.append([name, "skipped"] + ["-"] * 7)
            continue
        lat, ttfb = run["latency_ms_per_request"], run["time_to_first_block_ms"]
        rows.append([name, _pct(run["exact_match"]), _num(run["tokens_per_forward"]),
                     _num(run["tokens_per_second"], ".1f"), _num(run["forwards_per_request"], ".1f"),
                     _num(lat["mean"]), _num(lat["median"]), _num(lat["p90"]), _num(ttfb["median"])])
    return rows


def format_report(report: dict) -> str:
    r, mem = report, report["memory"]
    dev = mem["device"]
    device_mem = f"{dev['peak_mb']:.1f} MiB ({dev['source']})" if dev.get("peak_mb") is not None else "-"
    p = r["prompts"]
    out = [
        f"dllm-trt profile  {r['date']}  {r['engine']}  [{r['backend']} {r['provider']}]  on {r['device']}",
        f"prompts {p['source']}: {p['n']} ({p['with_answers']} with answers, {p['prompt_tokens']['median']:g} tokens "
        f"median), batch {r['batch']}, warm-up {r['warmup']}, repeat {r['repeat']}; "
        f"host peak RSS {mem['host_peak_rss_mb']:.1f} MiB; device memory {device_mem}",
        "",
        md_table(["setting", "exact match", "tokens/forward", "tokens/s", "forwards/request", "request ms mean",
                  "request ms median", "request ms p90", "first block ms median"], sweep_rows(r)),
        f"* {r['sweep']['rule']}",
    ]
    out += [f"skipped {run['label']}: {run['error']}" for run in r["runs"] if run["status"] != "ok"]
    marked = r["sweep"]["marked"]
    if marked is None:
        return "\n".join(out)
    run = r["runs"][marked]
    out += ["", f"forward latency by kind ({run['label']}; {compact_settings(run['settings'], r['model']['attention'])})"]
    rows = []
    for kind, d in run["forward_latency_ms"].items():
        rows.append([kind, str(d["count"]), _num(d.get("query_len"), "g"), _num(d.get("past_len"), "g"),
                     _num(d.get("tokens_per_forward")), _num(d["median"], ".3f"), _num(d["p90"], ".3f"),
                     _num(d["mean"], ".3f")])
    out.append(md_table(["kind", "forwards", "query len", "past len", "tokens/forward", "median ms", "p90 ms",
                         "mean ms"], rows))
    b = run["step_breakdown"]
    out += ["", f"per-step breakdown ({run['forwards']} steps in {run['requests']} requests; cache update "
                f"{'timed by the backend' if b['cache_timed'] else 'not separated (no cache reads/writes timed)'})"]
    rows = [[name, _num(b[key]["per_step_ms"], ".3f"), _num(b[key]["total_ms"], ".1f"), _pct(b[key]["share"])]
            for key, name in PARTS]
    rows.append(["whole requests", _num(run["wall_s"] * 1e3 / max(run["forwards"], 1), ".3f"),
                 _num(run["wall_s"] * 1e3, ".1f"), "100.0%"])
    out.append(md_table(["part", "per step ms", "total ms", "share"], rows))
    return "\n".join(out)


def compact_settings(s: dict, attention: str) -> str:
    """The decode settings that apply to this model family, e.g. 'strategy threshold 0.9, gen_length 16, ...'."""
    from ..runtime.settings import STEPPED

    knobs = {"threshold": ["threshold"], "confidence_threshold": ["threshold"], "factor": ["factor"],
             "hierarchy": ["threshold", "low_threshold"], "local_leap": ["threshold", "relaxed_threshold", "radius"],
             "credit": ["threshold", "credit_alpha", "credit_gamma", "credit_decay"],
             "sched": ["sched_high", "sched_low", "sched_shape"]}.get(s["strategy"], [])
    strategy = " ".join([s["strategy"]] + [str(s[k]) for k in knobs if k in s])
    keys = (["gen_length", "block_length"] + (["steps"] if s["strategy"] in STEPPED else [])
            if attention == "bidirectional" else ["gen_length", "sub_block_length"])
    cache = f"cache {s['cache']}"
    refresh = s.get("cache_refresh", "block")
    if refresh != "block":
        knobs = {"dllm_cache": ["dllm_prompt_interval", "dllm_response_interval", "dllm_refresh_ratio"],
                 "elastic": ["elastic_window", "elastic_gamma"]}[refresh]
        cache += " refresh " + " ".join([refresh] + [str(s[k]) for k in knobs if k in s])
    return ", ".join([f"strategy {strategy}"] + [f"{k} {s[k]}" for k in keys] + [cache])


def write_json(report: dict, dest: str) -> None:
    text = json.dumps(report, indent=2, default=float)
    if dest == "-":
        sys.stdout.write(text + "\n")
    else:
        write_file(dest, lambda tmp: tmp.write_text(text + "\n"))


def csv_rows(report: dict) -> list[dict]:
    """One row per setting."""
    kinds = list(dict.fromkeys(k for run in report["runs"] if run["status"] == "ok"
                               for k in run["forward_latency_ms"]))
    keys = list(dict.fromkeys(k for run in report["runs"] for k in run["point"]))
    rows = []
    for i, run in enumerate(report["runs"]):
        row = {"setting": run["label"], **{k: run["point"].get(k) for k in keys}, "status": run["status"],
               "marked": i == report["sweep"]["marked"], "error": run.get("error")}
        if run["status"] == "ok":
            lat, ttfb, b = run["latency_ms_per_request"], run["time_to_first_block_ms"], run["step_breakdown"]
            row.update({"exact_match": run["exact_match"], "tokens_per_forward": run["tokens_per_forward"],
                        "tokens_per_second": run["tokens_per_second"], "forwards_per_request": run["forwards_per_request"],
                        "request_ms_median": lat["median"], "request_ms_p90": lat["p90"], "request_ms_mean": lat["mean"],
                        "first_block_ms_median": ttfb["median"], "first_block_ms_p90": ttfb["p90"]})
            for key, _ in PARTS:
                row[f"{key}_ms_per_step"] = b[key]["per_step_ms"]
            for k in kinds:
                d = run["forward_latency_ms"].get(k)
                row[f"forward_{k}_ms_median"] = d["median"] if d else None
                row[f"forward_{k}_ms_p90"] = d["p90"] if d else None
        rows.append(row)
    return rows


def write_csv(report: dict, dest: str) -> None:
    rows = csv_rows(report)
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)

    write_file(dest, write)
