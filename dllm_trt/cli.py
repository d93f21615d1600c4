"""``dllm-trt``: export, generate, run and the demo.

    dllm-trt demo                                   # bundled tiny checkpoint -> ONNX -> ONNX Runtime CPU
    dllm-trt generate --model CKPT --prompt TEXT    # PyTorch reference on a checkpoint folder
    dllm-trt run --engine DIR --prompt TEXT         # an exported folder, no model code
    dllm-trt export --model CKPT --out DIR
    dllm-trt calibrate --model DIR --out calib.npz  # masked-diffusion calibration batches
    dllm-trt quantize --onnx DIR --out DIR --method int4-rtn|int4-awq|int8|fp8 [--calib calib.npz]
    dllm-trt profile --engine DIR [--sweep threshold=0.5,0.9]   # latency profile, speed/accuracy sweep
    dllm-trt build --onnx DIR --out DIR [--backend trt|trt-rtx]  # TensorRT / TensorRT-RTX engine
    dllm-trt check-engine --engine DIR                           # engine integrity / loadability
    dllm-trt check DIR                                           # an export / engine folder vs its file manifest
    dllm-trt serve --engine DIR [--port N] [--replicas N]       # OpenAI-compatible server, continuous batching

Every command prints the same fields in the same order; ``--json`` prints them as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import DllmError
# standard library only, and needed by main's handlers before anything heavy is imported
from .interrupts import Terminated, missing_module_message, sigterm_raises

BUNDLED = Path(__file__).resolve().parents[1] / "samples" / "checkpoints"
DEMO_MODEL = "llada-tiny"
DEMO_PROMPTS = ["add:457+368=", "rev:kernel=", "sort:tensorrt="]


# ---------------------------------------------------------------------- shared pieces
def add_decode_options(p: argparse.ArgumentParser) -> None:
    from .runtime.settings import STRATEGIES, strategy_arg

    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); an instruct checkpoint's "
                   "chat template wraps it as one user message")
    p.add_argument("--messages", action="append", metavar="FILE.json",
                   help="a conversation, an OpenAI-style JSON list of {role, content}, rendered with the folder's "
                   "chat template (repeat for a batch)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="tokenize --prompt as it is, even when the folder has a chat template")
    p.add_argument("--gen-length", type=int)
    p.add_argument("--block-length", type=int, help="semi-autoregressive block (LLaDA / Dream)")
    p.add_argument("--steps", type=int, help="denoising steps for the schedule strategies")
    p.add_argument("--strategy", type=strategy_arg, choices=list(STRATEGIES))
    p.add_argument("--threshold", type=float, help="Fast-dLLM confidence threshold")
    p.add_argument("--factor", type=float, help="Fast-dLLM factor rule")
    from .options import add_method_options

    add_method_options(p)
    p.add_argument("--cache", choices=["none", "prefix", "dual", "block", "sub_block"])
    p.add_argument("--sub-block-length", type=int, help="block diffusion sub-block")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--cfg-scale", type=float, help="LLaDA's unsupervised classifier-free guidance (no cache)")
    p.add_argument("--logits-eos-inf", action="store_true", default=None,
                   help="LLaDA generate's logits_eos_inf: never propose the EOS token (reads the rows' logits)")
    p.add_argument("--confidence-eos-eot-inf", action="store_true", default=None,
                   help="LLaDA generate's confidence_eos_eot_inf: EOS / <|eot_id|> proposals rank last (reads the "
                   "rows' logits)")
    p.add_argument("--eps", type=float, help="Dream: the end of the timestep schedule (default 1e-3)")
    p.add_argument("--block-size", type=int, help="block diffusion: decode in blocks of this many tokens (SDAR's "
                   "block_length; default: the model's block)")
    p.add_argument("--read-one-block-prompt", action="store_true", default=None,
                   help="Fast-dLLM v2: read a prompt of exactly block_size tokens (its generate does not: it decodes "
                   "from no prompt, and so does dllm-trt by default)")
    p.add_argument("--batch-sample", action="store_true", default=None,
                   help="Fast-dLLM v2: decode the prompts as one batch the way its eval harness (batch_sample) does, "
                   "for its evaluations' tokens (a row's tokens then depend on the batch; by default each prompt "
                   "decodes as it would alone)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at EOS")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def generation_config(model_dir: Path, args: argparse.Namespace):
    """Defaults from the folder (generation_config.json or dllm_config.json), then the command line."""
    from .runtime.settings import generation_config_from_args

    return generation_config_from_args(model_dir, args)


def decode_and_report(backend, model_dir: Path, prompts: list[str], args: argparse.Namespace, backend_name: str) -> dict:
    from .runtime import TextTokenizer, generate
    from .runtime.chat import load_chat_template, prompt_ids, read_messages_file

    from .options import check_decode_options, warn_unknown_characters

    tok = TextTokenizer(model_dir)
    gen = generation_config(model_dir, args)
    use_template = not getattr(args, "no_chat_template", False)
    ids = [prompt_ids(model_dir, tok, prompt=p, chat_template=use_template) for p in prompts]
    for path in getattr(args, "messages", None) or []:
        messages = read_messages_file(path)
        ids.append(prompt_ids(model_dir, tok, messages=messages, chat_template=use_template))
        last = messages[-1].get("content")
        prompts = [*prompts, last if isinstance(last, str) else str(path)]
    template = load_chat_template(model_dir) if use_template else None
    check_decode_options(args, gen, backend.config, max(len(i) for i in ids))
    warn_unknown_characters(tok, prompts)
    t0 = time.perf_counter()
    result = generate(backend, ids, gen)
    seconds = time.perf_counter() - t0
    decoded = result.decoded_tokens
    return {
        "model": str(model_dir),
        "backend": backend_name,
        "prompts": prompts,
        "chat_template": template.source if template else None,
        "answers": [tok.decode(t) for t in result.tokens],
        "nfe": result.nfe,
        "tokens_per_forward": round(result.tokens_per_forward, 3),
        "decoded_tokens": decoded,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(decoded / seconds, 1) if seconds > 0 else None,
        "settings": dataclasses.asdict(gen.resolved(backend.config.attention)),
    }


def print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"model    {report['model']}  [{report['backend']}]")
    if report.get("chat_template"):
        print(f"chat     {report['chat_template']}")
    for p, a in zip(report["prompts"], report["answers"]):
        print(f"prompt   {p}\nanswer   {a}")
    print(f"nfe      {report['nfe']}   tokens/forward {report['tokens_per_forward']:.2f}   "
          f"{report['decoded_tokens']} tokens in {report['seconds'] * 1e3:.1f} ms   "
          f"({report['tokens_per_second']} tokens/s)")


def need_prompts(args: argparse.Namespace) -> list[str]:
    """The --prompt texts (possibly none when --messages files are given)."""
    if not args.prompt and not getattr(args, "messages", None):
        raise DllmError("give at least one --prompt TEXT or --messages FILE.json")
    return args.prompt or []


# ---------------------------------------------------------------------- commands
def cmd_generate(args: argparse.Namespace) -> int:
    from .options import check_device

    model_dir = Path(args.model)
    if (model_dir / "dllm_config.json").is_file():
        # an export runs on ONNX Runtime at the dtype it was exported with: PyTorch's options would be ignored
        if args.device != "cpu" or args.dtype != "fp32":
            raise DllmError(f"--device / --dtype apply to checkpoint folders (PyTorch); {model_dir} is an export "
                            "(ONNX Runtime, its dtype fixed at export): use --provider cuda, or export with --dtype")
        return cmd_run(argparse.Namespace(**{**vars(args), "engine": args.model}))
    if args.provider not in (None, "cpu"):
        raise DllmError(f"--provider {args.provider} applies to exported folders (ONNX Runtime); {model_dir} is a "
                        "checkpoint folder run by PyTorch: use --device cuda")
    check_device(args.device)
    from .runtime.backends import load_backend

    backend = load_backend("torch", str(model_dir), dtype=args.dtype, device=args.device)
    print_report(decode_and_report(backend, model_dir, need_prompts(args), args, f"torch {args.device}"), args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.backends import load_backend

    from .options import require_intact

    engine = Path(args.engine)
    args.provider = getattr(args, "provider", None) or "cpu"
    require_intact(engine, full_hash=getattr(args, "verify", False))
    if getattr(args, "backend", "ort") == "trt":  # a `dllm-trt build` folder (TensorRT or TensorRT-RTX engine)
        backend = load_backend("trt", str(engine))
        name = f"{backend.engine_record['backend']} {backend.engine_record['backend_version']}"
    else:
        backend = load_backend("ort", str(engine), provider=args.provider)
        name = f"onnxruntime {args.provider}"
    print_report(decode_and_report(backend, engine, need_prompts(args), args, name), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Export the bundled checkpoint once (cached under --workdir), then decode on ONNX Runtime CPU."""
    model_dir = Path(args.model) if args.model else BUNDLED / DEMO_MODEL
    if not (model_dir / "config.json").is_file():
        if args.model:  # the user's folder: say what it is not
            what = ("an export (run it with `dllm-trt run --engine`)" if (model_dir / "dllm_config.json").is_file()
                    else "missing" if not model_dir.exists() else "not a checkpoint folder (no config.json)")
            raise DllmError(f"--model {model_dir} is {what}; demo takes a Hugging Face checkpoint folder")
        raise DllmError(f"the bundled checkpoint {model_dir} is missing from this installation; reinstall dllm-trt "
                        "or pass --model CKPT")
    from .demo_cache import demo_export_dir, usable_export

    engine = demo_export_dir(Path(args.workdir), model_dir)
    log = sys.stderr if args.json else sys.stdout
    if not usable_export(engine, say=lambda s: print(s, file=log)):
        from .export.onnx_export import export_onnx

        print(f"exporting {model_dir} -> {engine} (once)", file=log)
        export_onnx(str(model_dir), str(engine), progress=False, log=lambda s: print(s, file=log))
    args.engine = str(engine)
    if not args.prompt and not args.messages:
        args.prompt = DEMO_PROMPTS
    return cmd_run(args)


def build_parser() -> argparse.ArgumentParser:
    from .calibration.cli import add_calibration_commands
    from .engine.cli import add_engine_commands
    from .serving.cli import add_serving_commands
    from .export.cli import add_export_commands
    from .profiling.cli import add_profile_commands

    parser = argparse.ArgumentParser(prog="dllm-trt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dllm-trt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="decode with the PyTorch reference on a checkpoint folder")
    p.add_argument("--model", required=True, help="checkpoint folder (or an exported folder: then like `run`)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (PyTorch device)")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda"], help="for exported folders (default cpu)")
    add_decode_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="decode with ONNX Runtime on an exported folder (no model code, no torch)")
    p.add_argument("--engine", required=True, help="folder written by `dllm-trt export`")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="ort", choices=["ort", "trt"],
                   help="ort = ONNX Runtime on an export; trt = the engine of a `dllm-trt build` folder (GPU)")
    p.add_argument("--verify", action="store_true",
                   help="check every file's SHA-256 against the folder's manifest first (sizes are always checked)")
    add_decode_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job on the bundled tiny checkpoint, on ONNX Runtime CPU")
    p.add_argument("--model", help=f"checkpoint folder (default: the bundled {DEMO_MODEL})")
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "dllm-trt"), help="where the export is kept")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    add_decode_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="check an export / quantized / engine folder against its file manifest",
                       description="Compare the files of a folder written by export, quantize or build with the "
                                   "SHA-256 and sizes recorded in its dllm_config.json. rc 0: intact; 1: not.")
    p.add_argument("folder", help="folder written by `dllm-trt export`, `quantize` or `build`")
    p.add_argument("--quick", action="store_true", help="sizes only (no hashing)")
    p.set_defaults(func=cmd_check)

    add_export_commands(sub)
    add_calibration_commands(sub)
    add_engine_commands(sub)
    add_profile_commands(sub)
    add_serving_commands(sub)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from .integrity import verify_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise DllmError(f"{folder} is not a folder; pass a folder written by `dllm-trt export`, `quantize` or `build`")
    res = verify_folder(folder, full_hash=not args.quick)
    print(("ok   " if res.ok else "FAIL ") + res.summary())
    return 0 if res.ok else 1


def _is_path_refusal(e: OSError) -> bool:
    import errno

    return e.filename is not None and (
        isinstance(e, (PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError))
        or e.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EPERM, errno.EACCES))


def main(argv: Sequence[str] | None = None) -> int:
    """Every failure is one line on stderr: rc 2 for bad input, 130 for Ctrl-C, 143 for SIGTERM.

    Every dllm_trt import (numpy, tokenizers, then torch or onnxruntime) happens inside the ``try``: a Ctrl-C
    while they load is the same one line, not an import traceback."""
    try:
        with sigterm_raises():
            from .options import check_output_paths

            args = build_parser().parse_args(argv)
            check_output_paths(args)
            return args.func(args)
    except DllmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM or SIGHUP); nothing was left half-written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing was left half-written", file=sys.stderr)
        return 130
    except OSError as e:
        if not _is_path_refusal(e):
            raise
        # a path the system refuses: permissions, a read-only or special file system, a full disk
        print(f"error: {e.strerror or e}: {e.filename}; pick another path or free the space", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        message = missing_module_message(e.name)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
