// A first skinny bf16 GEMM, Y[M <= 32, N] = X[M, K] W[K, N] (W row-major [K, N], as ONNX Runtime's MatMul's B), fp32
// accumulation, split-K merged by the last CTA, against cuBLASLt on LLaDA-8B's block-step shapes (M = 32): a
// candidate for the block step's weight-bound GEMMs (QKV, O, down run at 3.0-3.7 TB/s in the graph). Not used by
// the project: on an H200 (2026-11-30, results/decode_step_h200_2026-11-30_run9/skinny_gemm.log) it reached
// 1.9-2.8 TB/s at best per shape (QKV 2.43, O 1.91, gate_up 2.83, down 2.68) against cuBLASLt's 3.42, 2.24, 4.01, 3.34.
//
//   nvcc -O3 -arch=sm_90 -std=c++17 -o skinny_gemm benchmarks/skinny_gemm.cu -lcublasLt && ./skinny_gemm
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cmath>
typedef __nv_bfloat16 bf16;
#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { printf("err %d at %s:%d\n", (int)e_, __FILE__, __LINE__); exit(1); } } while (0)

__device__ __forceinline__ unsigned smem_addr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ unsigned g_cnt[1 << 16];

// grid (N / NT, S); NT / 16 warps, each 16 columns x 32 rows; K range of split s: [s * ks, (s + 1) * ks)
template <int NT, int KT, int ST>
__global__ void __launch_bounds__(NT * 2) skinny(const bf16* __restrict__ X, const bf16* __restrict__ W, bf16* __restrict__ Y,
                                               float* __restrict__ ws, int M, int N, int K, int ks) {
  constexpr int NW = NT / 16, T = NW * 32, XL = KT + 8, WL = NT + 8;
  extern __shared__ __align__(128) unsigned char sm[];
  bf16* Xs = reinterpret_cast<bf16*>(sm);                 // [ST][32][XL]
  bf16* Ws = Xs + ST * 32 * XL;                           // [ST][KT][WL]
  const int n0 = blockIdx.x * NT, s = blockIdx.y, S = gridDim.y, k_begin = s * ks, steps = ks / KT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto load = [&](int it, int st) {
    const int k0 = k_begin + it * KT;
    bf16* xs = Xs + st * 32 * XL; bf16* wsm = Ws + st * KT * WL;
    for (int i = threadIdx.x; i < KT * NT / 8; i += T) {
      const int r = i / (NT / 8), c = (i % (NT / 8)) * 8;
      __pipeline_memcpy_async(wsm + r * WL + c, W + (size_t)(k0 + r) * N + n0 + c, 16);
    }
    for (int i = threadIdx.x; i < 32 * KT / 8; i += T) {
      const int r = i / (KT / 8), c = (i % (KT / 8)) * 8;
      if (r < M) __pipeline_memcpy_async(xs + r * XL + c, X + (size_t)r * K + k0 + c, 16);
      else *reinterpret_cast<uint4*>(xs + r * XL + c) = make_uint4(0, 0, 0, 0);
    }
  };
  for (int p = 0; p < ST - 1; ++p) { if (p < steps) load(p, p); __pipeline_commit(); }
  float acc[2][2][4] = {};
  for (int it = 0; it < steps; ++it) {
    const int st = it % ST;
    if (it + ST - 1 < steps) load(it + ST - 1, (it + ST - 1) % ST);
    __pipeline_commit();
    __pipeline_wait_prior(ST - 1);
    __syncthreads();
    const bf16* xs = Xs + st * 32 * XL; const bf16* wsm = Ws + st * KT * WL;
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk) {
      uint32_t a0[4], a1[4], b[4];
      ldsm_x4(a0, xs + (lane % 16) * XL + kk * 16 + (lane / 16) * 8);
      ldsm_x4(a1, xs + (16 + lane % 16) * XL + kk * 16 + (lane / 16) * 8);
      ldsm_x4_t(b, wsm + (kk * 16 + lane % 16) * WL + warp * 16 + (lane / 16) * 8);
      mma(acc[0][0], a0, b[0], b[1]); mma(acc[0][1], a0, b[2], b[3]);
      mma(acc[1][0], a1, b[0], b[1]); mma(acc[1][1], a1, b[2], b[3]);
    }
    __syncthreads();
  }
  const int g = lane >> 2, tq = lane & 3;
  if (S == 1) {
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const int col = n0 + warp * 16 + n * 8 + 2 * tq;
        const int r0 = m * 16 + g, r1 = r0 + 8;
        if (r0 < M) *reinterpret_cast<__nv_bfloat162*>(Y + (size_t)r0 * N + col) = __floats2bfloat162_rn(acc[m][n][0], acc[m][n][1]);
        if (r1 < M) *reinterpret_cast<__nv_bfloat162*>(Y + (size_t)r1 * N + col) = __floats2bfloat162_rn(acc[m][n][2], acc[m][n][3]);
      }
    return;
  }
  float* part = ws + (size_t)s * 32 * N;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int col = n0 + warp * 16 + n * 8 + 2 * tq;
      const int r0 = m * 16 + g;
      *reinterpret_cast<float2*>(part + (size_t)r0 * N + col) = make_float2(acc[m][n][0], acc[m][n][1]);
      *reinterpret_cast<float2*>(part + (size_t)(r0 + 8) * N + col) = make_float2(acc[m][n][2], acc[m][n][3]);
    }
  __shared__ unsigned last;
  __syncthreads();
  if (threadIdx.x == 0) { __threadfence(); last = atomicAdd(&g_cnt[blockIdx.x], 1u) == (unsigned)(S - 1); }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < M * NT / 4; i += T) {
    const int r = i / (NT / 4), c = n0 + (i % (NT / 4)) * 4;
    float4 sum = make_float4(0, 0, 0, 0);
    for (int q = 0; q < S; ++q) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(ws + (size_t)q * 32 * N + (size_t)r * N + c));
      sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
    }
    __nv_bfloat162* y = reinterpret_cast<__nv_bfloat162*>(Y + (size_t)r * N + c);
    y[0] = __floats2bfloat162_rn(sum.x, sum.y); y[1] = __floats2bfloat162_rn(sum.z, sum.w);
  }
  if (threadIdx.x == 0) g_cnt[blockIdx.x] = 0;
}

template <int NT, int KT, int ST>
void launch(const bf16* X, const bf16* W, bf16* Y, float* ws, int M, int N, int K, int S, cudaStream_t st) {
  constexpr size_t smem = (size_t)ST * (32 * (KT + 8) + KT * (NT + 8)) * 2;
  static bool once = false;
  if (!once) { CK(cudaFuncSetAttribute(skinny<NT, KT, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)); once = true; }
  skinny<NT, KT, ST><<<dim3(N / NT, S), NT * 2, smem, st>>>(X, W, Y, ws, M, N, K, K / S);
}

int main() {
  struct Shape { const char* name; int K, N; };
  std::vector<Shape> shapes = {{"qkv", 4096, 12288}, {"o", 4096, 4096}, {"gate_up", 4096, 24576}, {"down", 12288, 4096}};
  const int M = 32;
  cudaStream_t st; CK(cudaStreamCreate(&st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  size_t wsz = 64 << 20; void* work; CK(cudaMalloc(&work, wsz));
  float* ws; CK(cudaMalloc(&ws, (size_t)16 * 32 * 24576 * 4));
  for (auto& s : shapes) {
    const int K = s.K, N = s.N, nbuf = 4;
    std::vector<bf16*> W(nbuf);
    std::vector<bf16> hw((size_t)K * N), hx((size_t)M * K);
    srand(1);
    for (auto& v : hw) v = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f) * 0.05f);
    for (auto& v : hx) v = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f));
    for (auto& w : W) { CK(cudaMalloc(&w, (size_t)K * N * 2)); CK(cudaMemcpy(w, hw.data(), (size_t)K * N * 2, cudaMemcpyHostToDevice)); }
    bf16 *X, *Y, *Yr; CK(cudaMalloc(&X, (size_t)M * K * 2)); CK(cudaMalloc(&Y, (size_t)M * N * 2)); CK(cudaMalloc(&Yr, (size_t)M * N * 2));
    CK(cudaMemcpy(X, hx.data(), (size_t)M * K * 2, cudaMemcpyHostToDevice));
    // cuBLASLt reference (heuristic #0), column-major view as lt_sweep
    cublasLtMatmulDesc_t op; CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, N, K, N)); CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K)); CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    cublasLtMatmulHeuristicResult_t res[1]; int n = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, res, &n));
    float alpha = 1.f, beta = 0.f;
    auto ref = [&](int it) { CK(cublasLtMatmul(lt, op, &alpha, W[it % nbuf], la, X, lb, &beta, Yr, lc, Yr, lc, &res[0].algo, work, wsz, st)); };
    auto timeit = [&](auto fn) {
      for (int w = 0; w < 5; ++w) fn(w);
      std::vector<float> ts;
      for (int r = 0; r < 9; ++r) {
        cudaEventRecord(e0, st); for (int it = 0; it < 20; ++it) fn(it); cudaEventRecord(e1, st); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms * 1000 / 20);
      }
      std::sort(ts.begin(), ts.end()); return ts[4];
    };
    const double bytes = (double)K * N * 2;
    double tr = timeit(ref);
    printf("%-8s K=%5d N=%5d cuBLASLt %6.1f us (%4.2f TB/s)\n", s.name, K, N, tr, bytes / tr / 1e6);
    ref(0); CK(cudaStreamSynchronize(st));
    std::vector<bf16> yr((size_t)M * N), y((size_t)M * N);
    CK(cudaMemcpy(yr.data(), Yr, (size_t)M * N * 2, cudaMemcpyDeviceToHost));
    auto check = [&]() {
      CK(cudaMemcpy(y.data(), Y, (size_t)M * N * 2, cudaMemcpyDeviceToHost));
      double err = 0, mx = 0;
      for (size_t i = 0; i < y.size(); ++i) { err = std::max(err, (double)fabsf(__bfloat162float(y[i]) - __bfloat162float(yr[i]))); mx = std::max(mx, (double)fabsf(__bfloat162float(yr[i]))); }
      return err / std::max(mx, 1e-6);
    };
    for (int S : {1, 2, 3, 4, 6, 8}) {
      if (K % (S * 64) != 0) continue;
#define TRY(NT, KT, ST) { \
        auto fn = [&](int it) { launch<NT, KT, ST>(X, W[it % nbuf], Y, ws, M, N, K, S, st); }; \
        CK(cudaMemset(Y, 0, (size_t)M * N * 2)); fn(0); CK(cudaStreamSynchronize(st)); CK(cudaGetLastError()); \
        double rel = check(); double t = timeit(fn); \
        printf("   NT %3d KT %3d ST %d S %d: %6.1f us (%4.2f TB/s) ctas %5d rel.err %.2e\n", NT, KT, ST, S, t, bytes / t / 1e6, N / NT * S, rel); }
      TRY(64, 64, 6)
      TRY(128, 64, 4)
      TRY(64, 128, 4)
      TRY(128, 32, 8)
    }
    fflush(stdout);
    for (auto w : W) cudaFree(w); cudaFree(X); cudaFree(Y); cudaFree(Yr);
  }
  return 0;
}
