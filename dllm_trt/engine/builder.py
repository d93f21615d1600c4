"""``dllm-trt build``: an exported ONNX folder -> a TensorRT or TensorRT-RTX engine folder.

One builder for both Python APIs (``api.py`` names where they differ). Steps, each timed:

  hash     SHA-256 of model.onnx (+ model.onnx.data) and of the plugin libraries: with the options
           and the TensorRT version it keys the engine cache
  parse    the ONNX parser reads the graph *from its path* (so external data is found next to it);
           strongly typed whenever the graph carries the precision (always on TensorRT-RTX)
  build    one optimization profile over every dynamic input of the graph contract
           (dllm_trt/contract.py), from the shape ranges:
             input_ids / position_ids [B, L], attention_bias [B, 1, L, P + L],
             past_key_values.* [B, Hkv, P, D], logits_index [B, R] with R in 1..L
             (P min 0 works: TensorRT-RTX 1.7 accepts 0-length past dims in the profile, and the
             prefill runs with P = 0; a cached step passes the whole cache, P = its capacity)
           TensorRT's IProgressMonitor reports the build phases when the API has it
  write    model.engine, dllm_config.json (the export's, plus an ``engine`` record), build.log and
           the tokenizer files, written into a hidden temporary sibling and renamed into place

Engine cache: ``~/.cache/dllm-trt/engines/<key>/`` (``--cache-dir``, or ``DLLM_TRT_ENGINE_CACHE``);
the key hashes the ONNX bytes, the options, the backend and its version (and for TensorRT, which
builds for the GPU present, that GPU). A second build with the same inputs copies the cached
engine and says so.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__, atomic
from ..errors import DllmError
from ..contract import (CONFIG_FILE, EXTERNAL_DATA_FILE, MODEL_FILE, config_from_artifact, past_names,
                        read_artifact_config)
from . import api as api_mod
from .check import BUILD_LOG, ENGINE_FILE, file_sha256, parse_rtx_header
from .gpu import cc_tuple, gpu_info

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
QUANT_KEYS = ("method", "format", "bits", "block_size", "symmetric", "weights", "activations")
BUILDER_VERSION = 2  # part of the cache key: bump when the builder changes what it builds
AXES = {"B": "batch", "L": "query_len", "P": "past_len"}
DEFAULT_CACHE = Path.home() / ".cache" / "dllm-trt" / "engines"
PLUGIN_ENV = "DLLM_TRT_PLUGIN_PATH"
PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins"
# files of the ONNX folder an engine folder does not need
_ONNX_ONLY = (MODEL_FILE, EXTERNAL_DATA_FILE, CONFIG_FILE)


# ---------------------------------------------------------------------- shapes
def position_limit(meta: dict[str, Any], config) -> tuple[int, int]:
    """(max_positions of the export, most cache positions the decode loop uses): as in OrtBackend,
    block diffusion keeps one spare block (+1) beyond max_positions."""
    ranges = meta.get("shape_ranges") or {}
    max_pos = int(ranges.get("max_positions") or config.max_position_embeddings)
    spare = (config.block_size + 1) if config.block_size else 0
    return max_pos, max_pos + spare


def default_shapes(max_pos: int) -> dict[str, tuple[int, int, int]]:
    return {"batch": (1, 1, 8), "query_len": (1, min(64, max_pos), max_pos), "past_len": (0, min(256, max_pos // 2), max_pos)}


def parse_shapes(text: str | None, max_pos: int, limit: int) -> dict[str, tuple[int, int, int]]:
    """``B=1:1:8,L=1:32:64,P=0:512:4096`` (min:opt:max; one number = fixed) over the defaults; checked."""
    shapes = default_shapes(max_pos)
    if text:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            axis = AXES.get(key.upper()) or (key if key in AXES.values() else None)
            if not sep or axis is None:
                raise DllmError(f"--shapes: cannot read {part!r}; use B=min:opt:max,L=min:opt:max,P=min:opt:max "
                                "(B batch, L query length, P past length)")
            try:
                nums = tuple(int(v) for v in value.split(":"))
            except ValueError:
                raise DllmError(f"--shapes: {part!r} has a non-integer value") from None
            if len(nums) == 1:
                nums = nums * 3
            if len(nums) != 3:
                raise DllmError(f"--shapes: {part!r} needs one value or min:opt:max")
            shapes[axis] = nums
    for axis, (lo, opt, hi) in shapes.items():
        floor = 0 if axis == "past_len" else 1
        if not floor <= lo <= opt <= hi:
            raise DllmError(f"--shapes: {axis} {lo}:{opt}:{hi} must satisfy {floor} <= min <= opt <= max")
    for axis in ("query_len", "past_len"):
        hi = shapes[axis][2]
        if hi > limit:
            raise DllmError(f"--shapes: {axis} max {hi} is outside the exported range: the model has "
                            f"max_positions {max_pos} (dllm_config.json shape_ranges; the decode loop uses at most "
                            f"{limit} cache positions); use at most {limit}")
    return shapes


def profile_shapes(shapes: dict[str, tuple[int, int, int]], config) -> dict[str, list[list[int]]]:
    """min / opt / max of every input of the graph contract."""
    b, l, p = shapes["batch"], shapes["query_len"], shapes["past_len"]
    h, d = config.num_kv_heads, config.head_dim
    out = {}
    for name in ("input_ids", "position_ids"):
        out[name] = [[b[i], l[i]] for i in range(3)]
    out["attention_bias"] = [[b[i], 1, l[i], p[i] + l[i]] for i in range(3)]
    for name in past_names(config.num_layers):
        out[name] = [[b[i], h, p[i], d] for i in range(3)]
    out["logits_index"] = [[b[0], 1], [b[1], l[1]], [b[2], l[2]]]  # rows read: 1 .. the query length
    return out


DEFAULT_RTX_FLOOR = (8, 0)  # TensorRT-RTX's default targets start at Ampere


def default_targets(api: api_mod.TrtApi, precision: str) -> list[str] | None:
    """Without --compute-capability: TensorRT-RTX's own targets (None), except for a precision that needs a
    newer GPU (fp8: 8.9), where the engine is built for, and says it runs on, only the targets that can run it."""
    need = api.min_cc(precision) if api.rtx else None
    if not need or need <= DEFAULT_RTX_FLOOR:
        return None
    return [t for t in api_mod.RTX_TARGETS if cc_tuple(t) >= need]


def parse_targets(text: str | None) -> list[str] | None:
    if not text:
        return None
    items = [t.strip().lower().removeprefix("sm").removeprefix("_") for t in text.split(",") if t.strip()]
    if items == ["current"]:
        return items
    out = []
    for t in items:
        if "." not in t and t.isdigit() and len(t) >= 2:  # 89 -> 8.9, 120 -> 12.0
            t = f"{t[:-1]}.{t[-1]}"
        if t not in api_mod.RTX_TARGETS:
            raise DllmError(f"--compute-capability {t}: TensorRT-RTX targets are {', '.join(api_mod.RTX_TARGETS)} "
                            "(or `current`, the GPU of this machine); Hopper (9.0) and Blackwell datacenter (10.x) "
                            "are not TensorRT-RTX targets: use --backend trt there")
        if t not in out:
            out.append(t)
    return out


# ---------------------------------------------------------------------- precision
def onnx_precision(meta: dict[str, Any]) -> str:
    """The precision the graph itself carries: its dtype, or its QDQ quantization."""
    q = meta.get("quantization") or {}
    method = str(q.get("method", ""))
    if method.startswith("int4"):
        return "int4"
    if method in ("int8", "fp8"):
        return method
    return meta["dtype"]


def resolve_precision(api: api_mod.TrtApi, meta: dict[str, Any], requested: str | None, targets: list[str] | None,
                      gpu: dict | None, onnx_dir: Path) -> tuple[str, bool, Any]:
    """(precision, strongly_typed, builder flag or None); DllmError for what this backend cannot build."""
    q = meta.get("quantization") or {}
    if "MatMulNBits" in str(q.get("format", "")):
        raise DllmError(f"{onnx_dir} holds com.microsoft MatMulNBits (ONNX Runtime's INT4 form), which the TensorRT "
                        f"ONNX parser does not read; quantize with `--format qdq` for TensorRT")
    native = onnx_precision(meta)
    precision = requested or native
    if precision not in PRECISIONS:
        raise DllmError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    flag = None
    if precision != native:
        how = (f"export with `dllm-trt export --dtype {precision}`" if precision in ("fp32", "fp16", "bf16") else
               f"quantize the export with `dllm-trt quantize --method "
               f"{'int4-awq --format qdq' if precision == 'int4' else precision}`")
        if api.strongly_typed_only:
            raise DllmError(f"--precision {precision} with TensorRT-RTX needs a graph that carries it: TensorRT-RTX "
                            f"builds strongly typed networks only (no precision flags), and {onnx_dir} is {native}; "
                            f"{how}, or build with --precision {native}")
        if native == "fp32" and precision in ("fp16", "bf16"):
            flag = api.precision_flag(precision)
            if flag is None:
                raise DllmError(f"{api.display} {api.version} has no BuilderFlag.{api_mod.PRECISION_FLAGS[precision]} "
                                f"(weak typing is gone); {how}")
        else:
            raise DllmError(f"--precision {precision} from a {native} graph is not something TensorRT does by itself "
                            f"(no implicit quantization or up-casting here); {how}")
    need = api.min_cc(precision)
    if need:
        if api.rtx:
            low = [t for t in (targets or []) if t != "current" and cc_tuple(t) < need]
            if low:
                raise DllmError(f"--precision {precision} needs compute capability {need[0]}.{need[1]} or newer; "
                                f"TensorRT-RTX cannot compile it for {', '.join(low)} (drop those targets)")
        elif gpu is not None and cc_tuple(gpu["compute_capability"]) < need:
            raise DllmError(f"--precision {precision} needs compute capability {need[0]}.{need[1]} or newer; this GPU "
                            f"({gpu['name']}) is {gpu['compute_capability']}")
    strongly_typed = flag is None
    return precision, strongly_typed, flag


# ---------------------------------------------------------------------- plugins
def find_plugin_libraries(explicit: list[str] | None) -> list[Path]:
    """--plugin-lib paths, else $DLLM_TRT_PLUGIN_PATH, else the shared libraries in dllm_trt/plugins/."""
    if explicit:
        paths = [Path(p) for p in explicit]
    elif os.environ.get(PLUGIN_ENV):
        paths = [Path(p) for p in os.environ[PLUGIN_ENV].split(os.pathsep) if p]
    else:
        paths = sorted(p for p in PLUGIN_DIR.glob("*") if p.suffix in (".so", ".dll") or ".so." in p.name)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DllmError(f"plugin library not found: {', '.join(missing)}")
    return paths


def python_plugin_hook() -> Callable[[Any], Any] | None:
    """``dllm_trt.plugins.trt_plugins.register_plugins(trt_module)`` where the plugins work provides it
    (Python IPluginV3 plugins for both APIs); None until then."""
    try:
        from ..plugins import trt_plugins  # type: ignore[attr-defined]
    except Exception:  # not written yet, or its own imports are missing
        return None
    return getattr(trt_plugins, "register_plugins", None)


def register_plugins(api: api_mod.TrtApi, logger: Any, libs: list[Path], use_python_hook: bool) -> list[str]:
    """The plugin registration hook: shared libraries into the registry, then the Python plugins."""
    done = api.load_plugins(logger, [str(p) for p in libs]) if libs else []
    if use_python_hook:
        hook = python_plugin_hook()
        if hook is not None:
            hook(api.mod)
            done.append("dllm_trt.plugins.trt_plugins")
    return done


# ---------------------------------------------------------------------- cache
def onnx_digest(onnx_dir: Path, meta: dict[str, Any]) -> dict[str, str]:
    files = [meta.get("model_file") or MODEL_FILE]
    if meta.get("external_data"):
        files.append(meta["external_data"])
    out = {}
    for name in files:
        p = onnx_dir / name
        if not p.is_file():
            raise DllmError(f"{p} is missing; the export is incomplete, re-export the model")
        out[name] = file_sha256(p)
    return out


def _module_digest() -> str:
    """Hash of the Python plugin sources (dllm_trt/plugins/*.py): they are part of the engine."""
    h = hashlib.sha256()
    for p in sorted(PLUGIN_DIR.glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    env = os.environ.get("DLLM_TRT_ENGINE_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def _store_in_cache(cache_dir: Path, key: str, engine: Path, log_text: str, record: dict[str, Any]) -> Path | None:
    """Copy the engine into the cache (atomic rename); a cache that cannot be written is skipped, not fatal."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        shutil.copy2(engine, tmp / ENGINE_FILE)
        (tmp / BUILD_LOG).write_text(log_text)
        (tmp / "record.json").write_text(json.dumps(record, indent=2) + "\n")
        dest = cache_dir / key
        if dest.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        return dest
    except OSError:
        return None


def _cached(cache_dir: Path, key: str) -> Path | None:
    d = cache_dir / key
    rec = d / "record.json"
    if not (d / ENGINE_FILE).is_file() or not rec.is_file():
        return None
    try:
        want = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return None
    engine = d / ENGINE_FILE
    if engine.stat().st_size != want.get("bytes") or file_sha256(engine) != want.get("sha256"):
        return None  # a damaged cache entry is rebuilt, not used
    return d


# ---------------------------------------------------------------------- output folder
def _check_out(out: Path, onnx_dir: Path) -> None:
    if out.resolve() == onnx_dir.resolve():
        raise DllmError(f"--out {out} is the ONNX folder; write the engine folder somewhere else")
    if out.exists():
        if not out.is_dir():
            raise DllmError(f"--out {out} exists and is a file; pick a folder path")
        if any(out.iterdir()):
            try:
                earlier = "engine" in json.loads((out / CONFIG_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                earlier = False
            if not earlier:
                raise DllmError(f"--out {out} exists, is not empty and is not an earlier `dllm-trt build` folder; "
                                "pick a new folder")


# ---------------------------------------------------------------------- the build
def _build(api: api_mod.TrtApi, model_path: Path, config, prof: dict[str, list[list[int]]], strongly_typed: bool,
           flag: Any, precision: str, targets: list[str] | None, plugin_libs: list[Path], use_python_plugins: bool,
           opt_level: int | None,
           workspace_gib: float | None, verbose: bool, say: Callable[[str], None], timings: dict[str, float],
           progress: bool) -> tuple[bytes, list[str], list[dict]]:
    trt = api.mod
    logger = api.logger(verbose)
    t0 = time.perf_counter()
    if plugin_libs or use_python_plugins:
        register_plugins(api, logger, plugin_libs, use_python_plugins)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors
        raise DllmError(f"the {api.display} ONNX parser rejected {model_path}: " + "; ".join(errs[:5]) +
                        ("" if plugin_libs else " (if the graph uses dllm-trt plugins, build with --plugins)"))
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if set(names) != set(prof):
        raise DllmError(f"{model_path} has inputs {names}, not the dllm-trt graph contract {sorted(prof)}; re-export it")
    timings["parse"] = round(time.perf_counter() - t0, 3)
    say(f"parse    {timings['parse']:.2f} s  ({network.num_layers} layers, "
        f"{'strongly typed' if strongly_typed else 'weakly typed, ' + precision + ' flag'})")

    config_b = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in prof.items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    if not profile:  # IOptimizationProfile is falsy when invalid
        raise DllmError(f"{api.display} rejected the optimization profile {prof}: " + "; ".join(logger.errors[-3:]))
    config_b.add_optimization_profile(profile)
    if flag is not None:
        config_b.set_flag(flag)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config_b.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 matmuls
    if opt_level is not None:
        config_b.builder_optimization_level = int(opt_level)
    if workspace_gib:
        config_b.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    api.set_targets(config_b, targets)

    def on_phase(depth: int, name: str, seconds: float | None) -> None:
        if progress:
            indent = "  " * (depth + 1)
            print(f"{indent}{name}" + (" ..." if seconds is None else f"  {seconds:.2f} s"), file=sys.stderr, flush=True)

    monitor = api_mod.make_progress_monitor(api, on_phase)
    if monitor is not None:
        config_b.progress_monitor = monitor
    t0 = time.perf_counter()
    serialized = api_mod.build_interruptibly(builder, network, config_b, monitor)
    timings["build"] = round(time.perf_counter() - t0, 3)
    if serialized is None:
        raise DllmError(f"{api.display} could not build the engine: " + "; ".join(logger.errors[-5:] or ["no error logged"]))
    say(f"build    {timings['build']:.2f} s")
    phases = monitor.phases if monitor is not None else [{"phase": "build", "depth": 0, "seconds": timings["build"]}]
    lines = logger.lines + ([f"({logger.dropped} verbose messages not kept; --verbose keeps them)"] if logger.dropped else [])
    return bytes(serialized), lines, phases


def build_engine(onnx_dir: str | Path, out_dir: str | Path, backend: str = "trt-rtx", precision: str | None = None,
                 shapes: str | None = None, plugins: bool = False, plugin_libs: list[str] | None = None,
                 compute_capabilities: str | list[str] | None = None, opt_level: int | None = None,
                 workspace_gib: float | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 verbose: bool = False) -> dict[str, Any]:
    """Build ``model.engine`` for an exported folder; returns the report (also the ``engine`` record)."""
    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    say = log or (lambda s: print(s, file=sys.stderr))
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    meta = read_artifact_config(onnx_dir)
    if meta.get("engine"):
        raise DllmError(f"{onnx_dir} is an engine folder (built by `dllm-trt build`), not an ONNX export; "
                        f"pass the export folder it came from ({meta['engine'].get('source_onnx', '?')})")
    if (meta.get("onnx") or {}).get("ops") in ("ort", "ort-cuda"):
        raise DllmError(f"{onnx_dir} was exported with --ops {meta['onnx']['ops']} (ONNX Runtime's fused ops), "
                        "which the TensorRT ONNX parser does not read; export again with --ops standard (the default) "
                        "to build an engine")
    model_path = onnx_dir / (meta.get("model_file") or MODEL_FILE)
    if not model_path.is_file():
        raise DllmError(f"{model_path} is missing; the export is incomplete, re-export the model")
    config = config_from_artifact(meta, source=str(onnx_dir / CONFIG_FILE))
    _check_out(out, onnx_dir)
    api = api_mod.load(backend)
    max_pos, limit = position_limit(meta, config)
    shape_ranges = parse_shapes(shapes, max_pos, limit)
    targets = ([t.lower() for t in compute_capabilities] if isinstance(compute_capabilities, list)
               else parse_targets(compute_capabilities))
    if targets and not api.has_targets:
        api.set_targets(None, targets)  # raises the TensorRT message
    gpu = gpu_info(0)
    if api.backend == "trt" and gpu is None:
        say("warning: no GPU found here; TensorRT builds for the GPU it runs on and will likely fail "
            "(TensorRT-RTX builds without one: --backend trt-rtx --compute-capability ...)")
    if targets == ["current"] and gpu is None:
        raise DllmError("--compute-capability current needs a GPU here; name the targets instead (e.g. 8.9,12.0)")
    precision, strongly_typed, flag = resolve_precision(api, meta, precision, targets, gpu, onnx_dir)
    targets = targets or default_targets(api, precision)
    libs: list[Path] = []
    py_plugins = False
    if plugins or plugin_libs:
        libs = find_plugin_libraries(plugin_libs)
        py_plugins = bool(plugins) and python_plugin_hook() is not None
        if not libs and not py_plugins:
            raise DllmError(f"--plugins: no TensorRT plugin is available: dllm-trt's plugins are not built yet "
                            f"(no dllm_trt.plugins.trt_plugins.register_plugins, no plugin library in {PLUGIN_DIR}); "
                            f"pass --plugin-lib PATH.so or set {PLUGIN_ENV}, or build without --plugins "
                            f"(the exported graph needs none)")
    prof = profile_shapes(shape_ranges, config)

    t0 = time.perf_counter()
    digests = onnx_digest(onnx_dir, meta)
    plugin_digests = {str(p): file_sha256(p) for p in libs}
    if py_plugins:
        plugin_digests["dllm_trt.plugins.trt_plugins"] = _module_digest()
    timings["hash"] = round(time.perf_counter() - t0, 3)
    options = {"precision": precision, "strongly_typed": strongly_typed, "shapes": shape_ranges,
               "targets": targets, "opt_level": opt_level, "workspace_gib": workspace_gib}
    per_gpu = api.backend == "trt" or targets == ["current"]
    key_parts = {"builder": BUILDER_VERSION, "backend": api.backend, "backend_version": api.version,
                 "onnx": digests, "plugins": sorted(plugin_digests.values()), "options": options,
                 # the engine depends on the GPU here for TensorRT, and for TensorRT-RTX's `current` target
                 "gpu": (gpu or {}).get("compute_capability") if per_gpu else None,
                 "gpu_name": (gpu or {}).get("name") if api.backend == "trt" else None}
    key = cache_key(key_parts)
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    hit = _cached(cache_root, key) if use_cache else None

    tmp = atomic.staging_dir(out, "build")
    try:
        if hit is not None:
            t0 = time.perf_counter()
            shutil.copy2(hit / ENGINE_FILE, tmp / ENGINE_FILE)
            cached_log = (hit / BUILD_LOG).read_text() if (hit / BUILD_LOG).is_file() else ""
            cached_rec = json.loads((hit / "record.json").read_text())
            timings["copy"] = round(time.perf_counter() - t0, 3)
            say(f"cache    hit: reusing the engine built on {cached_rec.get('built_at', '?')} from {hit} "
                f"(key {key}); no build")
            lines = [f"engine reused from the cache {hit} (key {key}); its original build log follows", "",
                     cached_log]
            phases = cached_rec.get("phases", [])
            build_seconds = cached_rec.get("build_seconds")
            built_at = cached_rec.get("built_at")
        else:
            say(f"building {api.display} {api.version} engine from {model_path} ({precision}"
                + (f", targets {', '.join(targets)}" if targets else "") + ")")
            data, lines, phases = _build(api, model_path, config, prof, strongly_typed, flag, precision, targets,
                                         libs, py_plugins, opt_level, workspace_gib, verbose, say, timings,
                                         progress)
            (tmp / ENGINE_FILE).write_bytes(data)
            del data
            build_seconds = timings["build"]
            built_at = _dt.datetime.now().isoformat(timespec="seconds")
        engine_path = tmp / ENGINE_FILE
        size = engine_path.stat().st_size
        digest = file_sha256(engine_path)
        with open(engine_path, "rb") as f:
            header = parse_rtx_header(f.read(64)) if api.rtx else None
        record = {
            "file": ENGINE_FILE,
            "bytes": size,
            "sha256": digest,
            "backend": api.backend,
            "backend_version": api.version,
            "python_module": api.module_name,
            "precision": precision,
            "strongly_typed": strongly_typed,
            # what the QDQ graph carries (the export's `quantization` record, abridged); None for a plain export
            "quantization": ({k: (meta.get("quantization") or {})[k] for k in QUANT_KEYS
                              if k in (meta.get("quantization") or {})} or None),
            "compute_capabilities": (targets if targets and targets != ["current"] else
                                     [gpu["compute_capability"]] if targets == ["current"] and gpu else
                                     (header or {}).get("targets") if api.rtx else
                                     [gpu["compute_capability"]] if gpu else None),
            "compute_capability_source": ("--compute-capability" if targets and targets != ["current"] else
                                          "this GPU" if (targets == ["current"] or not api.rtx) else
                                          "TensorRT-RTX default (from the engine header)"),
            "gpu": gpu if api.backend == "trt" or targets == ["current"] else None,
            "shape_ranges": {k: list(v) for k, v in shape_ranges.items()},
            "profiles": [{name: {"min": v[0], "opt": v[1], "max": v[2]} for name, v in prof.items()}],
            "max_positions": max_pos,
            "plugins": list(plugin_digests),
            # the export's graph contract: None (past/present) or its --plugins mode (caches in/out, unmask)
            "opt_level": opt_level,
            "cache_key": key,
            "cache_hit": hit is not None,
            "onnx_sha256": digests,
            "source_onnx": str(onnx_dir.resolve()),
            "build_seconds": build_seconds,
            "built_at": built_at,
            "phases": phases,
            "log": BUILD_LOG,
            "dllm_trt_version": __version__,
        }
        head = [f"dllm-trt {__version__} build  {_dt.datetime.now().isoformat(timespec='seconds')}",
                f"onnx     {model_path}  (sha256 {', '.join(f'{k} {v[:16]}' for k, v in digests.items())})",
                f"backend  {api.display} {api.version} ({api.module_name})",
                f"options  {json.dumps(options)}", f"cache    key {key} " + ("hit" if hit else "miss"),
                "phases   " + ", ".join(f"{p['phase']} {p['seconds']} s" for p in phases if p.get("depth", 0) <= 1),
                ""]
        log_text = "\n".join(head + lines) + "\n"
        (tmp / BUILD_LOG).write_text(log_text)
        new_meta = dict(meta)
        new_meta["engine"] = record
        (tmp / CONFIG_FILE).write_text(json.dumps(new_meta, indent=2) + "\n")
        for p in sorted(onnx_dir.iterdir()):
            if p.is_file() and p.name not in _ONNX_ONLY and p.name != (meta.get("external_data") or ""):
                shutil.copy2(p, tmp / p.name)
        if hit is None and use_cache:
            stored = _store_in_cache(cache_root, key, tmp / ENGINE_FILE, log_text,
                                     {k: record[k] for k in ("bytes", "sha256", "backend", "backend_version",
                                                             "precision", "build_seconds", "built_at", "phases")})
            if stored is None:
                say(f"warning: could not write the engine cache at {cache_root}")
        atomic.publish(tmp, out)
    except BaseException:
        atomic.discard(tmp)
        raise
    timings["total"] = round(time.perf_counter() - t_start, 3)
    return {"out": str(out), "engine": str(out / ENGINE_FILE), "cache": "hit" if hit else ("miss" if use_cache else "off"),
            "cache_dir": str(cache_root), "timings_s": timings, **record}
