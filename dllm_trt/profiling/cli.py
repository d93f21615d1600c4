"""The ``profile`` subcommand. The main CLI calls :func:`add_profile_commands`; nothing heavy is
imported until the command runs."""
from __future__ import annotations

import argparse
import sys

from ..errors import DllmError

DESCRIPTION = """\
Latency profile of a decode setting (or a grid of them) on an exported folder (ORT) or a
checkpoint folder (torch): per-forward latency (median, p90) by forward kind, a per-step
breakdown (model forward, cache update, unmask/sampling, host overhead), tokens per forward,
tokens/s, time to the first finished block, peak memory, and exact match where the prompts have
answers. Warm-up requests are not measured. Examples:

  dllm-trt profile --engine /tmp/llada-tiny-onnx --n 50 --sweep threshold=0.5,0.7,0.9,1.0 block=4,8 \\
                   --json profile.json --csv profile.csv --plots plots/
  dllm-trt profile --engine /tmp/l8b/llada8b-onnx --provider cuda --synthetic-prompt-len 256 --n 4 \\
                   --warmup 1 --gen-length 256 --block-length 32 --strategy low_confidence --steps 256 \\
                   --sweep cache=none,prefix,dual --json l8b.json --plots l8b-plots/
"""


def add_profile_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``dllm-trt profile`` on the main parser's subparsers; returns its parser."""
    from ..runtime.settings import STRATEGIES, strategy_arg

    p = subparsers.add_parser("profile", help="latency profile (and speed/accuracy sweep) of decode settings",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="exported folder (ort) or checkpoint folder (torch)")
    p.add_argument("--backend", default="ort", choices=["ort", "torch", "trt"],
                   help="ort: an export folder; torch: a checkpoint folder; trt: a `dllm-trt build` engine folder (GPU)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ORT provider; torch: the device")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="torch backend weights")
    p.add_argument("--threads", type=int, help="CPU threads (ORT intra-op / torch)")
    p.add_argument("--prompts", default="builtin",
                   help="'builtin' (synthetic tasks with answers, seed 12345), 'builtin:TASK' (one task of "
                        "dllm_trt.tasks, e.g. builtin:carry) or FILE.jsonl of {\"prompt\", \"answer\"?}")
    p.add_argument("--n", type=int, help="number of prompts (default: 20 builtin, 8 synthetic, all of a file)")
    p.add_argument("--synthetic-prompt-len", type=int, metavar="N",
                   help="random token-id prompts of N tokens (no tokenizer needed, no accuracy; implies --no-stop)")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the synthetic prompts")
    p.add_argument("--batch", type=int, default=1, help="prompts per request (generate call)")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests before each setting")
    p.add_argument("--repeat", type=int, default=1, help="times every prompt is decoded while measuring")
    p.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2",
                   help="grid over settings: threshold, block (block_length; sub_block_length for block "
                        "diffusion), cache, strategy, steps, gen_length, factor, ...")
    # decode settings (defaults from the folder's generation defaults)
    p.add_argument("--gen-length", type=int)
    p.add_argument("--block-length", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--strategy", type=strategy_arg, choices=list(STRATEGIES))
    p.add_argument("--threshold", type=float)
    p.add_argument("--factor", type=float)
    from ..options import add_method_options

    add_method_options(p)
    p.add_argument("--cache", choices=["none", "prefix", "dual", "block", "sub_block"])
    p.add_argument("--sub-block-length", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--no-stop", action="store_true", help="do not stop at EOS")
    # outputs
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-': stdout, no table)")
    p.add_argument("--csv", metavar="FILE", help="one row per setting")
    p.add_argument("--plots", metavar="DIR", help="PNG plots: latency per step, tokens per step, the sweep")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args: argparse.Namespace) -> int:
    from ..options import check_decode_values, positive_int
    from .report import format_report, write_csv, write_json
    from .session import profile_engine

    check_decode_values(args)
    if args.backend != "torch" and args.dtype != "fp32":  # an export's dtype was fixed when it was exported
        raise DllmError(f"--dtype applies to --backend torch (checkpoint weights); --backend {args.backend} runs the "
                        "folder at the dtype it was exported with: drop --dtype, or export with --dtype")
    positive_int("--n", args.n)
    positive_int("--threads", args.threads)
    positive_int("--synthetic-prompt-len", args.synthetic_prompt_len)
    # --plots / --csv / --json were checked by the CLI before the command (options.check_output_paths)
    report = profile_engine(args)
    if args.plots and report["sweep"]["marked"] is not None:
        from .plots import write_plots

        report["plots"] = write_plots(report, args.plots)
    if args.json:
        write_json(report, args.json)
    if args.csv:
        write_csv(report, args.csv)
    if args.json != "-":
        print(format_report(report))
    if report["sweep"]["marked"] is None:
        print("error: no setting could run: " + "; ".join(r["error"] for r in report["runs"]), file=sys.stderr)
        return 2
    return 0
