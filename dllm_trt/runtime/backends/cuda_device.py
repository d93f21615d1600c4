"""The few CUDA driver calls the GPU backends make (cuda-python, no torch): device memory, copies,
one stream, and the in-place KV-cache write kernel.

``CudaDevice.scatter_kv`` writes the current tokens' keys/values (the graph's ``present.*``
outputs, [B, Hkv, L, D] each) into the position-indexed caches ([B, Hkv, C, D] each) at their
positions, for every layer at once: one kernel launch, only the written rows move, the cache is
never copied. The kernel is compiled once per process with NVRTC for the device's architecture.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ...errors import DllmError

SCATTER_KV_SOURCE = r"""
extern "C" __global__ void dllm_scatter_kv(const unsigned long long* src, const unsigned long long* dst,
                                           const long long* pos, int heads, int length, int capacity, int words,
                                           long long rows)
{
    // One thread per 16 bytes of a row (per 4 bytes when a row is not a multiple of 16), rows = B * Hkv * L per
    // tensor (blockIdx.y): present[b, h, l, :] -> cache[b, h, pos[b, l], :]; pos < 0 means "not written".
    // (One block per row of 256 bytes took 51 us for a 320-token prefill of 8 tensors on an H200.)
    const int vec = (words & 3) == 0 ? 4 : 1;
    const int per_row = words / vec;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * per_row) return;
    const long long r = i / per_row;
    const long long col = (i - r * per_row) * vec;  // in words
    const long long bh = r / length;
    const long long l = r - bh * length;
    const long long p = pos[(bh / heads) * length + l];
    if (p < 0 || p >= capacity) return;
    const unsigned int* s = (const unsigned int*)src[blockIdx.y] + r * words + col;
    unsigned int* d = (unsigned int*)dst[blockIdx.y] + (bh * capacity + p) * words + col;
    if (vec == 4) {
        *(uint4*)d = *(const uint4*)s;
    } else {
        *d = *s;
    }
}
"""


def _import_cuda():
    """cuda-python's driver API (``cuda.bindings.driver``), or a clear error."""
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        try:
            from cuda import cuda as cu  # cuda-python before 12.6 (same driver API)
        except ImportError as e:
            raise DllmError("the GPU backends need cuda-python for device memory and the cache write kernel: "
                            "pip install cuda-bindings (or: pip install -e \".[cuda]\")") from e
    return cu


class CudaDevice:
    """The few driver-API calls the backend makes, checked, on one stream of one device (primary context)."""

    def __init__(self, device_id: int = 0):
        cu = self.cu = _import_cuda()
        try:
            self._check(cu.cuInit(0), "cuInit")
        except DllmError:
            raise
        except Exception as e:  # cuda.bindings raises when libcuda is absent
            raise DllmError(f"no CUDA driver here ({e}); the GPU backends need an NVIDIA GPU and its driver") from e
        self.device_id = device_id
        self.dev = self._check(cu.cuDeviceGet(device_id), f"cuDeviceGet({device_id})")
        self.ctx = self._check(cu.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self.make_current()
        self.stream = self._check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING.value), "cuStreamCreate")
        self.stream_handle = int(self.stream)
        self._live: set[int] = set()
        self._pinned: set[int] = set()

    def _check(self, result: Any, what: str) -> Any:
        cu = self.cu
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != cu.CUresult.CUDA_SUCCESS:
            _, msg = cu.cuGetErrorString(err)
            msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
            raise DllmError(f"CUDA {what} failed: {getattr(err, 'name', err)} ({msg})")
        return rest[0] if len(rest) == 1 else rest

    def make_current(self) -> None:
        self._check(self.cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cu.cuMemAlloc(max(int(nbytes), 256)), f"cuMemAlloc({nbytes} bytes)"))
        self._live.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr in self._live:
            self._live.discard(ptr)
            self._check(self.cu.cuMemFree(ptr), "cuMemFree")

    def pinned(self, nbytes: int) -> np.ndarray:
        """A page-locked host array of ``nbytes`` (uint8): copies from and to it are truly asynchronous,
        so a step's upload, run, cache write and download queue on the stream behind one sync."""
        n = max(int(nbytes), 8)
        ptr = int(self._check(self.cu.cuMemHostAlloc(n, 0), f"cuMemHostAlloc({n} bytes)"))
        self._pinned.add(ptr)
        return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))

    def htod(self, ptr: int, array: np.ndarray) -> None:
        self._check(self.cu.cuMemcpyHtoDAsync(ptr, array.ctypes.data, array.nbytes, self.stream), "cuMemcpyHtoDAsync")

    def dtoh(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.cu.cuMemcpyDtoHAsync(array.ctypes.data, ptr, array.nbytes, self.stream), "cuMemcpyDtoHAsync")

    def copy2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        cu = self.cu
        p = cu.CUDA_MEMCPY2D()
        p.srcMemoryType = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE
        p.srcDevice = src
        p.srcPitch = src_pitch
        p.dstMemoryType = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE
        p.dstDevice = dst
        p.dstPitch = dst_pitch
        p.WidthInBytes = width
        p.Height = height
        self._check(cu.cuMemcpy2DAsync(p, self.stream), "cuMemcpy2DAsync")

    def zero2d(self, ptr: int, pitch: int, width: int, height: int) -> None:
        self._check(self.cu.cuMemsetD2D8Async(ptr, pitch, 0, width, height, self.stream), "cuMemsetD2D8Async")

    def zero(self, ptr: int, nbytes: int) -> None:
        self._check(self.cu.cuMemsetD8Async(ptr, 0, nbytes, self.stream), "cuMemsetD8Async")

    def htod_sync(self, ptr: int, array: np.ndarray) -> None:
        self._check(self.cu.cuMemcpyHtoD(ptr, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")

    def dtoh_sync(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.cu.cuMemcpyDtoH(array.ctypes.data, ptr, array.nbytes), "cuMemcpyDtoH")

    def _scatter_function(self) -> Any:
        if getattr(self, "_scatter_fn", None) is None:
            self._scatter_fn = self._compile(SCATTER_KV_SOURCE, "dllm_scatter_kv")
        return self._scatter_fn

    def _compile(self, source: str, name: str) -> Any:
        """NVRTC -> PTX for this device's compute capability -> a loaded function."""
        try:
            from cuda.bindings import nvrtc
        except ImportError as e:
            raise DllmError("the in-place cache write needs NVRTC from cuda-python: pip install cuda-bindings") from e
        cu = self.cu
        major = self._check(cu.cuDeviceGetAttribute(
            cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.dev), "cuDeviceGetAttribute")
        minor = self._check(cu.cuDeviceGetAttribute(
            cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.dev), "cuDeviceGetAttribute")

        def ok(result, what):
            err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
            if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                raise DllmError(f"NVRTC {what} failed: {err}")
            return rest[0] if len(rest) == 1 else rest

        prog = ok(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []), "create")
        opts = [f"--gpu-architecture=compute_{major}{minor}".encode()]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = ok(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise DllmError(f"NVRTC could not compile {name}: {log.decode(errors='replace')}")
        size = ok(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        ok(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
        self._module = self._check(cu.cuModuleLoadData(ptx), "cuModuleLoadData")
        return self._check(cu.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction")

    def scatter_kv(self, src_table: int, dst_table: int, tensors: int, pos: int, batch: int, heads: int, length: int,
                   capacity: int, row_bytes: int) -> None:
        """present[t][b, h, l, :] -> cache[t][b, h, pos[b, l], :] for t < tensors (tables: device arrays of
        pointers; pos: device int64 [B, L], -1 = not written). Queued on this device's stream."""
        if row_bytes % 4:
            raise DllmError(f"a K/V row of {row_bytes} bytes is not a multiple of 4; the cache write kernel needs it")
        words = row_bytes // 4
        rows = batch * heads * length
        work = rows * (words // 4 if words % 4 == 0 else words)  # threads: one per 16 bytes (or per 4)
        threads = 256
        args = ((src_table, dst_table, pos, heads, length, capacity, words, rows),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_longlong))
        if work == 0:
            return
        self._check(self.cu.cuLaunchKernel(self._scatter_function(), (work + threads - 1) // threads, tensors, 1,
                                           threads, 1, 1, 0, self.stream, args, 0), "cuLaunchKernel(dllm_scatter_kv)")

    # CUDA graphs of the TensorRT backend's enqueue (trt_backend.TrtBackend._enqueue)
    def begin_capture(self) -> None:
        """Record this thread's work on the stream into a graph instead of running it."""
        cu = self.cu
        self._check(cu.cuStreamBeginCapture(self.stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                    "cuStreamBeginCapture")

    def end_capture(self) -> Any:
        """Stop recording; the instantiated graph (raises when the capture was invalidated)."""
        cu = self.cu
        graph = self._check(cu.cuStreamEndCapture(self.stream), "cuStreamEndCapture")
        try:
            return self._check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            cu.cuGraphDestroy(graph)

    def launch_graph(self, graph: Any) -> None:
        self._check(self.cu.cuGraphLaunch(graph, self.stream), "cuGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self._check(self.cu.cuGraphExecDestroy(graph), "cuGraphExecDestroy")

    def sync(self) -> None:
        self._check(self.cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self) -> None:
        cu = self.cu
        try:
            self.sync()
            for ptr in list(self._live):
                self.free(ptr)
            for ptr in list(self._pinned):
                cu.cuMemFreeHost(ptr)
            self._pinned.clear()
            cu.cuStreamDestroy(self.stream)
            cu.cuDevicePrimaryCtxRelease(self.dev)
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass


