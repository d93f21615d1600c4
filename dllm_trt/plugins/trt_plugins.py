"""TensorRT plugins for the two ops: IPluginV3 classes written once for ``tensorrt`` and
``tensorrt_rtx_bindings`` (the two packages expose the same Python plugin API).

    from dllm_trt.plugins.trt_plugins import register_plugins
    import tensorrt as trt                     # or: import tensorrt_rtx_bindings as trt
    register_plugins(trt)                      # before parsing an ONNX graph with dllm_trt nodes,
                                               # and before deserialising an engine that holds them

``register_plugins`` registers one creator per op in namespace ``dllm_trt`` (version "1"), so
the ONNX parser maps a node ``dllm_trt::ThresholdUnmask`` / ``dllm_trt::SubBlockCacheAttention``
(op type = plugin name, attribute ``plugin_namespace = "dllm_trt"``, written by
``dllm-trt export --plugins custom``) to them. Node attributes arrive as plugin fields
(``mask_id``; ``scale``) and are serialised into the engine.

Execution (``enqueue``) wraps TensorRT's device pointers as torch tensors (no copies) and runs the
Triton kernels of triton_unmask.py / triton_cache.py on TensorRT's stream; torch and triton are
imported at the first enqueue, not at registration, so registering and building need neither.
``SubBlockCacheAttention`` declares its cache outputs aliased to its cache inputs
(``IPluginV3OneBuildV2.get_aliased_input``): the caches are written in place, and a runtime binds
the same buffer to ``cache.{i}.*`` and ``cache_out.{i}.*``.

TensorRT-RTX (1.7, measured CPU-only on CI): the parser finds and creates these plugins, then
the process aborts when the network takes the plugin layer; see docs/plugins.md and the test
that records it. The standard-op fallback (``--plugins fallback``) is the path there.
"""
from __future__ import annotations

import sys
import traceback
from typing import Any

import numpy as np

from . import DOMAIN, PLUGIN_VERSION, SUBBLOCK_CACHE_ATTENTION, THRESHOLD_UNMASK

_CLASSES: dict[int, dict[str, Any]] = {}  # id(trt module) -> classes (built once per module)
_ALIVE: list = []  # Python creators must outlive the registry's use of them


def _field(fc, name: str, default):
    """A plugin field's first value (the ONNX parser passes ints as INT32, floats as FLOAT32 arrays)."""
    for f in fc or []:
        if f.name == name:
            data = np.asarray(f.data).reshape(-1)
            return type(default)(data[0]) if data.size else default
    return default


def _report(where: str) -> None:
    """Plugin methods are called from C++ that cannot take a Python exception: say what failed."""
    print(f"dllm_trt plugin: error in {where}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- device pointers as torch tensors
_TYPESTR = {"FLOAT": "<f4", "HALF": "<f2", "BF16": "<u2", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}


class _DeviceArray:
    def __init__(self, ptr: int, shape, typestr: str):
        self.__cuda_array_interface__ = {"shape": tuple(int(s) for s in shape), "typestr": typestr,
                                         "data": (int(ptr), False), "version": 3, "strides": None, "stream": None}


def as_tensor(ptr: int, desc, trt) -> Any:
    """A torch tensor over TensorRT's buffer (``desc``: PluginTensorDesc with dims and type)."""
    import torch

    name = str(desc.type).split(".")[-1]
    t = torch.as_tensor(_DeviceArray(ptr, tuple(desc.dims), _TYPESTR[name]), device="cuda")
    return t.view(torch.bfloat16) if name == "BF16" else t


def _make_classes(trt) -> dict[str, Any]:
    F, H, B16, I64, BOOL = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16, trt.DataType.INT64,
                            trt.DataType.BOOL)
    floats = (F, H, B16)
    # IPluginV3OneBuildV2 (aliased outputs: in-place caches) where this TensorRT has it; without it the
    # cache outputs are separate buffers and the plugin copies the caches into them before writing.
    build_iface = getattr(trt, "IPluginV3OneBuildV2", None) or trt.IPluginV3OneBuild

    class _Base(trt.IPluginV3, trt.IPluginV3OneCore, build_iface, trt.IPluginV3OneRuntime):
        NAME = ""
        N_OUT = 0

        def __init__(self):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            build_iface.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = self.NAME
            self.plugin_namespace = DOMAIN
            self.plugin_version = PLUGIN_VERSION
            self.num_outputs = self.N_OUT

        def get_capability_interface(self, type):
            return self

        def clone(self):
            c = type(self)()
            c.__dict__.update(self.__dict__)
            return c

        def configure_plugin(self, inp, out):
            pass

        def on_shape_change(self, inp, out):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def get_workspace_size(self, inputs, outputs):
            return 0  # the kernels take their few bytes of scratch from torch's caching allocator

        def get_aliased_input(self, output_index):
            return -1

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            import torch

            with torch.cuda.stream(torch.cuda.ExternalStream(int(stream))):
                ins = [as_tensor(p, d, trt) for p, d in zip(inputs, input_desc)]
                outs = [as_tensor(p, d, trt) for p, d in zip(outputs, output_desc)]
                self.run(ins, outs)

    class ThresholdUnmaskPlugin(_Base):
        """logits [B, L, V] (f32/f16/bf16), tokens [B, L] i64, candidates [B, L] bool, threshold [1] f32
        -> new_tokens [B, L] i64, num_unmasked [B] i64, confidence [B, L] f32."""

        NAME, N_OUT = THRESHOLD_UNMASK, 3

        def __init__(self, mask_id: int = -1):
            super().__init__()
            self.mask_id = int(mask_id)

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([trt.PluginField("mask_id", np.array([self.mask_id], np.int32),
                                                              trt.PluginFieldType.INT32)])

        def get_output_data_types(self, input_types):
            return [I64, I64, F]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            try:
                rows = trt.DimsExprs(inputs[1])
                per_seq = trt.DimsExprs(1)
                per_seq[0] = inputs[1][0]
                return [rows, per_seq, trt.DimsExprs(inputs[1])]
            except Exception:
                _report("ThresholdUnmask.get_output_shapes")
                raise

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            want = {0: floats, 1: (I64,), 2: (BOOL,), 3: (F,), 4: (I64,), 5: (I64,), 6: (F,)}
            return desc.type in want.get(pos, ())

        def run(self, ins, outs):
            from .triton_unmask import threshold_unmask_triton

            logits, tokens, candidates, threshold = ins
            threshold_unmask_triton(logits, tokens, candidates, self.mask_id, threshold, out=tuple(outs))

    class SubBlockCacheAttentionPlugin(_Base):
        """query [B, H, L, D], key/value [B, Hkv, L, D], key_cache/value_cache [B, Hkv, T, D], cache_position
        [B, L] i64, bias [B, 1, L, S] f32 -> output [B, H, L, D], key_cache_out/value_cache_out (aliases)."""

        NAME, N_OUT = SUBBLOCK_CACHE_ATTENTION, 3

        def __init__(self, scale: float = 0.0):
            super().__init__()
            self.scale = float(scale)

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([trt.PluginField("scale", np.array([self.scale], np.float32),
                                                              trt.PluginFieldType.FLOAT32)])

        def get_output_data_types(self, input_types):
            return [input_types[0], input_types[3], input_types[4]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0]), trt.DimsExprs(inputs[3]), trt.DimsExprs(inputs[4])]

        def get_aliased_input(self, output_index):
            return {1: 3, 2: 4}.get(int(output_index), -1)

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return desc.type in floats
            if pos in (1, 2, 3, 4, 7, 8, 9):  # k, v, caches, outputs: the query's type
                return desc.type == in_out[0].desc.type
            if pos == 5:
                return desc.type == I64
            if pos == 6:
                return desc.type == F
            return False

        def run(self, ins, outs):
            from .triton_cache import cache_attention_triton, scatter_kv_triton

            q, k, v, kc, vc, pos, bias = ins
            out, kc_out, vc_out = outs
            if kc_out.data_ptr() != kc.data_ptr() or vc_out.data_ptr() != vc.data_ptr():
                kc_out.copy_(kc)  # TensorRT did not alias (older TensorRT): write the output buffers
                vc_out.copy_(vc)
            scatter_kv_triton(k, v, kc_out, vc_out, pos)
            cache_attention_triton(q, kc_out, vc_out, bias, self.scale or None, out=out)

    def _creator(plugin_cls, fields: list[tuple[str, Any, Any, Any]], build):
        class Creator(trt.IPluginCreatorV3One):
            def __init__(self):
                trt.IPluginCreatorV3One.__init__(self)
                self.name = plugin_cls.NAME
                self.plugin_namespace = DOMAIN
                self.plugin_version = PLUGIN_VERSION
                self.field_names = trt.PluginFieldCollection([trt.PluginField(n, np.array([d], dt), ft)
                                                              for n, d, dt, ft in fields])

            def create_plugin(self, name, fc, phase):
                try:
                    return build(fc)
                except Exception:
                    _report(f"{plugin_cls.NAME} creator")
                    raise

        Creator.__name__ = f"{plugin_cls.NAME}Creator"
        return Creator

    unmask_creator = _creator(ThresholdUnmaskPlugin, [("mask_id", -1, np.int32, trt.PluginFieldType.INT32)],
                              lambda fc: ThresholdUnmaskPlugin(_field(fc, "mask_id", -1)))
    cache_creator = _creator(SubBlockCacheAttentionPlugin, [("scale", 0.0, np.float32, trt.PluginFieldType.FLOAT32)],
                             lambda fc: SubBlockCacheAttentionPlugin(_field(fc, "scale", 0.0)))
    return {THRESHOLD_UNMASK: (ThresholdUnmaskPlugin, unmask_creator),
            SUBBLOCK_CACHE_ATTENTION: (SubBlockCacheAttentionPlugin, cache_creator)}


def plugin_classes(trt) -> dict[str, Any]:
    """{op name: (plugin class, creator class)} for this TensorRT module (built once per module)."""
    key = id(trt)
    if key not in _CLASSES:
        _CLASSES[key] = _make_classes(trt)
    return _CLASSES[key]


def register_plugins(trt) -> list[str]:
    """Register the dllm_trt plugin creators with ``trt``'s plugin registry (``tensorrt`` or
    ``tensorrt_rtx_bindings``); returns ``["dllm_trt::ThresholdUnmask", ...]``. Idempotent."""
    registry = trt.get_plugin_registry()
    names = []
    for op, (_, creator_cls) in plugin_classes(trt).items():
        if registry.get_creator(op, PLUGIN_VERSION, DOMAIN) is None:
            creator = creator_cls()
            if not registry.register_creator(creator, DOMAIN):
                raise RuntimeError(f"{getattr(trt, '__name__', trt)} refused to register the plugin {DOMAIN}::{op}")
            _ALIVE.append(creator)
        names.append(f"{DOMAIN}::{op}")
    return names
