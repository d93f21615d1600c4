"""The two TensorRT Python APIs behind one small interface.

``tensorrt`` (TensorRT 10, datacenter / Jetson / RTX GPUs; builds need the target GPU) and
``tensorrt_rtx_bindings`` (TensorRT-RTX 1.x; builds ahead of time on any machine, even without a
GPU, for the compute capabilities it is told) expose the same builder, parser, runtime and
execution-context API. The few places where they differ are named here and nowhere else:

  STRONGLY TYPED      TensorRT-RTX builds strongly typed networks only: the engine computes in the
                      ONNX graph's types (an fp16 export gives an fp16 engine; QDQ gives int8/fp8/
                      int4). TensorRT also builds weakly typed networks, where the precision
                      builder flags (FP16, BF16) let it lower an fp32 graph.       -> ``precision_flag``
  TARGETS             Compute-capability targeting exists only in TensorRT-RTX
                      (``IBuilderConfig.num_compute_capabilities`` / ``set_compute_capability``);
                      TensorRT builds for the GPU it runs on.                       -> ``set_targets``
  VALIDITY            TensorRT-RTX has ``Runtime.get_engine_validity`` (used by the load-time check
                      and by ``dllm-trt check-engine``); TensorRT 10 has it only in recent releases.
                                                                                   -> ``engine_validity``
  HEADER              TensorRT-RTX engines start with the magic ``vtrt``.           -> ``ENGINE_MAGIC``
  PLUGINS             the plugin registry is the same call in both
                      (``get_plugin_registry().load_library``); TensorRT also ships its own plugin
                      library (``init_libnvinfer_plugins``).                       -> ``load_plugins``

Nothing here imports either package at import time.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ...errors import DllmError

BACKENDS = ("trt", "trt-rtx")

# backend -> (module, pip packages, pyproject extra, what it is)
_SPECS = {
    "trt": ("tensorrt", "tensorrt", "trt", "TensorRT"),
    "trt-rtx": ("tensorrt_rtx_bindings", "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings", "trt-rtx",
                "TensorRT-RTX"),
}

ENGINE_MAGIC = {"trt-rtx": b"vtrt"}  # TensorRT's plan header is not documented; no magic is checked there

# TensorRT-RTX ComputeCapability members by "major.minor" (1.7 exposes these; SM90 / SM100 are not targets)
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}

# lowest compute capability of the GPU types of each precision (TensorRT-RTX 1.7 rejects lower targets
# at build time with "model contains HW-specific datatypes": measured for bf16, fp8 and int4)
MIN_CC = {"bf16": (8, 0), "fp8": (8, 9)}
# TensorRT-RTX 1.7 only (measured): Turing (7.5) has no FP32 GEMM ("FP32 GEMM is not supported") and no int4
RTX_MIN_CC = {**MIN_CC, "fp32": (8, 0), "int4": (8, 0)}

PRECISION_FLAGS = {"fp16": "FP16", "bf16": "BF16"}  # weakly typed lowering, TensorRT only


def normalize_backend(name: str) -> str:
    n = name.lower().replace("_", "-")
    aliases = {"tensorrt": "trt", "trt": "trt", "trt-rtx": "trt-rtx", "tensorrt-rtx": "trt-rtx", "rtx": "trt-rtx"}
    if n not in aliases:
        raise DllmError(f"unknown engine backend {name!r}; use one of {', '.join(BACKENDS)}")
    return aliases[n]


def install_hint(backend: str) -> str:
    module, pip, extra, what = _SPECS[normalize_backend(backend)]
    return f"pip install {pip}  (or: pip install -e \".[{extra}]\")"


def is_installed(backend: str) -> bool:
    try:
        load(backend)
    except DllmError:
        return False
    return True


@dataclass
class TrtApi:
    """One of the two Python APIs (``mod``), with the places where they differ as methods."""

    backend: str  # "trt" | "trt-rtx"
    mod: Any
    version: str
    module_name: str
    display: str
    _plugin_handles: list = field(default_factory=list)

    @property
    def rtx(self) -> bool:
        return self.backend == "trt-rtx"

    # -- STRONGLY TYPED -------------------------------------------------------------------
    @property
    def strongly_typed_only(self) -> bool:
        return self.rtx

    def network_flags(self, strongly_typed: bool) -> int:
        if not strongly_typed:
            return 0
        return 1 << int(self.mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def precision_flag(self, precision: str) -> Any:
        """The builder flag that lowers an fp32 graph to ``precision`` (TensorRT, weakly typed); None if absent."""
        if self.rtx or precision not in PRECISION_FLAGS:
            return None
        return getattr(self.mod.BuilderFlag, PRECISION_FLAGS[precision], None)

    # -- TARGETS --------------------------------------------------------------------------
    @property
    def has_targets(self) -> bool:
        return self.rtx and hasattr(self.mod, "ComputeCapability")

    def set_targets(self, config: Any, targets: list[str] | None) -> None:
        """TensorRT-RTX: build for these compute capabilities ("8.9", ...; "current" = this GPU).
        None leaves TensorRT-RTX's default (its Ampere-and-newer targets)."""
        if not targets:
            return
        if not self.has_targets:
            raise DllmError(f"{self.display} builds for the GPU it runs on; --compute-capability is a TensorRT-RTX "
                            "option (use --backend trt-rtx, or build on the target GPU)")
        cc = self.mod.ComputeCapability
        members = [cc.CURRENT] if targets == ["current"] else [getattr(cc, RTX_TARGETS[t]) for t in targets]
        config.num_compute_capabilities = len(members)
        for i, m in enumerate(members):
            if not config.set_compute_capability(m, i):
                raise DllmError(f"{self.display} refused compute capability {targets[i]} as target {i}")

    def min_cc(self, precision: str) -> tuple[int, int] | None:
        """The lowest compute capability that runs ``precision`` with this API (None: no limit known)."""
        return (RTX_MIN_CC if self.rtx else MIN_CC).get(precision)

    # -- VALIDITY -------------------------------------------------------------------------
    def engine_validity(self, runtime: Any, data: bytes) -> tuple[str, list[str]] | None:
        """(VALID | SUBOPTIMAL | INVALID, [diagnostics]) from ``Runtime.get_engine_validity``; None if absent."""
        fn = getattr(runtime, "get_engine_validity", None)
        if fn is None:
            return None
        validity, diag = fn(data)
        names = [n for n, v in getattr(self.mod, "EngineInvalidityDiagnostics").__members__.items()
                 if int(diag) & int(v)] if hasattr(self.mod, "EngineInvalidityDiagnostics") else []
        return str(validity).split(".")[-1], names

    # -- PLUGINS --------------------------------------------------------------------------
    def load_plugins(self, logger: Any, libraries: list[str]) -> list[str]:
        """Register the plugin libraries (paths) with the process-wide registry; returns their paths."""
        if not self.rtx and hasattr(self.mod, "init_libnvinfer_plugins"):
            self.mod.init_libnvinfer_plugins(logger, "")
        registry = self.mod.get_plugin_registry()
        loaded = []
        for lib in libraries:
            handle = registry.load_library(str(lib))
            if handle is None:
                raise DllmError(f"{self.display} could not load the plugin library {lib} (not a plugin library, "
                                "built for another TensorRT, or its plugins are already registered)")
            self._plugin_handles.append(handle)
            loaded.append(str(lib))
        return loaded

    # -- shared helpers -------------------------------------------------------------------
    def logger(self, verbose: bool = False) -> Any:
        """An ILogger that keeps the messages (see ``make_logger``)."""
        return make_logger(self, verbose)

    def dtype_name(self, dt: Any) -> str:
        return {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8", "INT4": "int4"}.get(
            str(dt).split(".")[-1], str(dt))


def load(backend: str) -> TrtApi:
    """Import the API of ``backend`` ("trt" or "trt-rtx"); DllmError naming the pip packages if absent."""
    backend = normalize_backend(backend)
    module, pip, extra, what = _SPECS[backend]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise DllmError(f"--backend {backend} needs {what}, which is not installed here ({e}); "
                        f"{install_hint(backend)}") from e
    except OSError as e:  # the bindings import but a shared library is missing
        raise DllmError(f"{what} is installed but its libraries do not load ({e}); reinstall: {install_hint(backend)}") from e
    version = getattr(mod, "__version__", "unknown")
    return TrtApi(backend, mod, str(version), module, what)


# ---------------------------------------------------------------------- logger and progress
def make_logger(api: TrtApi, verbose: bool = False):
    """An ILogger that keeps messages (INFO and up; VERBOSE too with ``verbose``) for the build log."""
    trt = api.mod
    sev = trt.ILogger.Severity

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self.errors: list[str] = []
            self.dropped = 0

        def log(self, severity, msg):  # noqa: D401  (TensorRT callback)
            if severity == sev.VERBOSE and not verbose:
                self.dropped += 1
                return
            tag = str(severity).split(".")[-1]
            self.lines.append(f"[{tag}] {msg}")
            if severity in (sev.ERROR, sev.INTERNAL_ERROR):
                self.errors.append(msg)

    return CapturingLogger()


def make_progress_monitor(api: TrtApi, on_phase=None):
    """An IProgressMonitor recording the duration of the top two levels of build phases; None if the API has none.

    ``on_phase(depth, name, seconds_or_None)`` is called at each start (None) and finish.
    """
    import threading
    import time

    trt = api.mod
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()
            self.depth: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.phases: list[dict] = []

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                d = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
                self.depth[phase_name] = d
                self.started[phase_name] = time.perf_counter()
            if on_phase and d <= 1:
                on_phase(d, phase_name, None)

        cancelled = False  # set by build_interruptibly on Ctrl-C / SIGTERM: the builder stops at its next step

        def step_complete(self, phase_name, step):
            return not self.cancelled

        def phase_finish(self, phase_name):
            with self.lock:
                d = self.depth.get(phase_name, 0)
                dt = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
                if d <= 1:
                    self.phases.append({"phase": phase_name, "depth": d, "seconds": round(dt, 3)})
            if on_phase and d <= 1:
                on_phase(d, phase_name, dt)

    return Monitor()


def build_interruptibly(builder, network, config, monitor=None, poll_s: float = 0.1):
    """``builder.build_serialized_network`` in a worker thread, so Ctrl-C / SIGTERM reach the main thread
    while TensorRT builds in C++. On an interruption the progress monitor cancels the build (its
    ``step_complete`` returns False), the worker is waited for (TensorRT calls back into Python: it must
    not outlive the interpreter) and the interruption propagates, so the caller's cleanup runs.

    An Event, not Thread.join: on Python < 3.12 a join interrupted by KeyboardInterrupt marks the
    thread as stopped, and the next join returns at once."""
    import threading

    result: dict = {}
    done = threading.Event()

    def work():
        try:
            result["plan"] = builder.build_serialized_network(network, config)
        except BaseException as e:  # noqa: B036 - handed to the main thread
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="tensorrt-build", daemon=True).start()
    try:
        while not done.wait(poll_s):
            pass
    except BaseException:
        if monitor is not None:
            monitor.cancelled = True
        while True:  # a cancelled build stops at the builder's next step; a second Ctrl-C does not skip the wait
            try:
                if done.wait(poll_s):
                    break
            except KeyboardInterrupt:
                continue
        raise
    if "error" in result:
        raise result["error"]
    return result.get("plan")
