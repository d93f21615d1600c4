// dllm-trt's CUDA custom ops for ONNX Runtime (domain "dllm_trt.cuda"), bf16.
//
// Why: on ONNX Runtime's CUDA provider a transformer layer of the `--ops ort` graph is ~28 kernels,
// and at a 32-token block step the ~1.6 us between two kernels of a CUDA graph plus the small
// kernels themselves (Split, two RotaryEmbedding, MultiHeadAttention's past concat and transposes,
// the presents' transposes, QuickGelu, Mul) cost as much as a third of the weight reads. These two
// ops replace them, per layer, by three or four kernels; the graph contract does not change
// (dllm_trt/contract.py: the attention reads the whole cache as the past, masked by the bias, and
// returns the current tokens' keys/values as the presents).
//
//   CacheAttention(qkv [B, L, (H + 2 Hkv) D], position_ids [B, L] int64, cos [P, D/2], sin [P, D/2] (fp32),
//                  attention_bias [B, 1, L, C + L], past_key [B, Hkv, C, D], past_value [B, Hkv, C, D])
//     -> out [B, L, H D], present_key [B, Hkv, L, D], present_value [B, Hkv, L, D]
//     q, k, v = split(qkv); q, k = half-split RoPE at position_ids; out = softmax(q k^T scale + bias) v over
//     the keys (past, current); query head h reads key/value head h / (H / Hkv).
//     A 4th, optional output is the workspace when the keys of a (query tile, head) are split over CTAs (a step
//     with too few query tiles x heads to fill the GPU); a combine kernel then merges the splits.
//     Kernels (plan_for picks; benchmarks/cache_attention.py times each): head dims up to 128 run register-resident
//     flash kernels (mma.sync m16n8k16, K/V copied with cp.async): flash_split_kernel for block steps (L <= 64:
//     one CTA per (key split, head) with every query row, presents fused, the splits merged in a thread block
//     cluster (sm_90) or by the last CTA: one kernel) and flash_kernel for long queries (after presents_kernel);
//     flash_warps_kernel (the block steps' kernel before it) stays selectable; head dim 256 runs the WMMA
//     attention_kernel.
//   SiluMul(gate_up [N..., 2 I]) -> [N..., I] = silu(gate) * up.
//   SelectRows(logits [B, R, V] fp32; mask_token_id) -> tokens [B, R] int64, confidence, margin, neg_entropy [B, R]
//     models.layers.select_rows in one kernel (the standard graph's ArgMax / Exp / ReduceSum chain is ~16 kernels).
//
// Numerics: fp32 arithmetic, one rounding to bf16 per output (RoPE too: LLaDA's rope_full_precision exactly; the
// tables of families that rotate in the model dtype hold values rounded to it) (flash-attention style: probabilities rounded to
// bf16 before P V, fp32 accumulation). A query row whose every key is masked gives 0 (MultiHeadAttention gives
// the mean of the values); such rows are padding and never read. The WMMA kernel skips key tiles that are masked
// for every row of a warp (exp(-1e9) is 0 in fp32, so the result is the same); the flash kernels compute them.
//
// Build: python -m dllm_trt.plugins.ort_cuda_build (nvcc + ONNX Runtime's C/C++ API headers).

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int kQT = 16;      // query rows per CTA (one WMMA tile)
constexpr int kKT = 32;      // keys per tile
constexpr float kMasked = -1e4f;  // a bias below this masks its key (the contract writes -1e9)

// warps per CTA, each over its own key tiles; few enough that two CTAs share an SM up to D = 128 (227 KB of
// shared memory on sm_90): the keys are also split over CTAs (see plan_splits)
template <int D>
__host__ __device__ constexpr int warps_for() { return D >= 256 ? 2 : (D >= 128 ? 3 : 4); }

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ int64_t clamp_pos(int64_t p, int P) { return p < 0 ? 0 : (p >= P ? P - 1 : p); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// half-split RoPE of 8 pairs: x1 = x[d .. d + 8], x2 = x[d + D/2 ..] (bf16), cos/sin of those d (fp32)
// -> lo = x1 cos - x2 sin, hi = x2 cos + x1 sin, rounded once to bf16
__device__ __forceinline__ void rope8(const uint4& x1, const uint4& x2, const float4 (&c)[2], const float4 (&s)[2],
                                      uint4& lo, uint4& hi) {
  const uint32_t a[4] = {x1.x, x1.y, x1.z, x1.w}, e[4] = {x2.x, x2.y, x2.z, x2.w};
  const float cf[8] = {c[0].x, c[0].y, c[0].z, c[0].w, c[1].x, c[1].y, c[1].z, c[1].w};
  const float sf[8] = {s[0].x, s[0].y, s[0].z, s[0].w, s[1].x, s[1].y, s[1].z, s[1].w};
  uint32_t l[4], h[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float a0 = bf16_lo(a[w]), a1 = bf16_hi(a[w]), e0 = bf16_lo(e[w]), e1 = bf16_hi(e[w]);
    const float c0 = cf[2 * w], c1 = cf[2 * w + 1], s0 = sf[2 * w], s1 = sf[2 * w + 1];
    l[w] = pack_bf16(a0 * c0 - e0 * s0, a1 * c1 - e1 * s1);
    h[w] = pack_bf16(e0 * c0 + a0 * s0, e1 * c1 + a1 * s1);
  }
  lo = make_uint4(l[0], l[1], l[2], l[3]);
  hi = make_uint4(h[0], h[1], h[2], h[3]);
}
// 8 fp32 table entries (32-byte aligned)
__device__ __forceinline__ void load8(float4 (&dst)[2], const float* src) {
  dst[0] = reinterpret_cast<const float4*>(src)[0];
  dst[1] = reinterpret_cast<const float4*>(src)[1];
}

// present_key = RoPE(k), present_value = v, [B, Hkv, L, D]: one thread per chunk of 8 pairs (d, d + D/2) of a
// (token, K/V head), 16-byte loads and stores. 1-D grid over B * L * Hkv * D / 16 chunks.
__global__ void presents_kernel(const bf16* __restrict__ qkv, const int64_t* __restrict__ pos,
                                const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                bf16* __restrict__ pk, bf16* __restrict__ pv, int L, int H, int Hkv, int D, int P,
                                int64_t chunks) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= chunks) return;
  const int half = D / 2, per_row = half / 8, c = (int)(i % per_row) * 8;
  const int64_t th = i / per_row;  // (b * L + l) * Hkv + h
  const int h = (int)(th % Hkv);
  const int64_t bl = th / Hkv, b = bl / L, l = bl % L;
  const bf16* row = qkv + bl * (H + 2 * Hkv) * D;
  const bf16* k = row + (int64_t)(H + h) * D + c;
  const bf16* v = row + (int64_t)(H + Hkv + h) * D + c;
  const int64_t p = clamp_pos(pos[bl], P);
  const uint4 a4 = *reinterpret_cast<const uint4*>(k), b4 = *reinterpret_cast<const uint4*>(k + half);
  const uint4 v1 = *reinterpret_cast<const uint4*>(v), v2 = *reinterpret_cast<const uint4*>(v + half);
  float4 cs[2], sn[2];
  load8(cs, cos_t + p * half + c);
  load8(sn, sin_t + p * half + c);
  uint4 lo4, hi4;
  rope8(a4, b4, cs, sn, lo4, hi4);
  const int64_t o = ((b * Hkv + h) * L + l) * D + c;
  *reinterpret_cast<uint4*>(pk + o) = lo4;
  *reinterpret_cast<uint4*>(pk + o + half) = hi4;
  *reinterpret_cast<uint4*>(pv + o) = v1;
  *reinterpret_cast<uint4*>(pv + o + half) = v2;
}

// Q rows q0 .. q0 + ROWS of head h with RoPE into shared memory (row stride ld; rows past L are zeros), by THREADS
// threads. Each thread takes chunks of 8 pairs (d, d + D/2) in 16-byte loads and issues every load of its chunks
// before it uses one: the positions first, then q and the tables (the prologue of the flash kernels waited for
// global memory once per scalar load, a third of a prefill's attention time).
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_q_rope(bf16* Qs, int ld, const bf16* __restrict__ qkv,
                                            const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
                                            const float* __restrict__ sin_t, int b, int h, int q0, int L, int W,
                                            int P) {
  constexpr int half = D / 2, per_row = half / 8, chunks = ROWS * per_row, per = (chunks + THREADS - 1) / THREADS;
  int64_t p[per];
#pragma unroll
  for (int j = 0; j < per; ++j) {
    const int i = threadIdx.x + j * THREADS, l = q0 + i / per_row;
    p[j] = i < chunks && l < L ? clamp_pos(pos[(int64_t)b * L + l], P) : -1;
  }
  uint4 x1[per], x2[per];
  float4 cs[per][2], sn[per][2];
#pragma unroll
  for (int j = 0; j < per; ++j) {
    const int i = threadIdx.x + j * THREADS, l = q0 + i / per_row, c = (i % per_row) * 8;
    x1[j] = x2[j] = make_uint4(0, 0, 0, 0);
    cs[j][0] = cs[j][1] = sn[j][0] = sn[j][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (p[j] >= 0) {
      const bf16* q = qkv + ((int64_t)b * L + l) * W + (int64_t)h * D + c;
      x1[j] = *reinterpret_cast<const uint4*>(q);
      x2[j] = *reinterpret_cast<const uint4*>(q + half);
      load8(cs[j], cos_t + p[j] * half + c);
      load8(sn[j], sin_t + p[j] * half + c);
    }
  }
#pragma unroll
  for (int j = 0; j < per; ++j) {
    const int i = threadIdx.x + j * THREADS, r = i / per_row, c = (i % per_row) * 8;
    if (i >= chunks) continue;
    uint4 lo4, hi4;
    rope8(x1[j], x2[j], cs[j], sn[j], lo4, hi4);
    *reinterpret_cast<uint4*>(Qs + r * ld + c) = lo4;
    *reinterpret_cast<uint4*>(Qs + r * ld + c + half) = hi4;
  }
}

// Shared memory layout. Rows of Q/K/V tiles are padded by 8 bf16 and the output accumulator's by 4 floats, so
// the WMMA loads/stores of consecutive rows start in different banks.
template <int D>
struct Smem {
  static constexpr int ld = D + 8;     // Q, K, V row stride (bf16)
  static constexpr int ldo = D + 4;    // output accumulator row stride (float)
  static constexpr int ldp = kKT + 8;  // probabilities row stride (bf16)
  static constexpr size_t q = kQT * ld * sizeof(bf16);
  static constexpr size_t k = kKT * ld * sizeof(bf16);
  static constexpr size_t s = kQT * kKT * sizeof(float);
  static constexpr size_t p = kQT * ldp * sizeof(bf16);
  static constexpr size_t o = kQT * ldo * sizeof(float);
  static constexpr size_t a = kQT * sizeof(float);  // the rows' rescale factors of this tile
  static constexpr size_t warp = 2 * k + s + p + o + 2 * a;
  static constexpr size_t total = q + warps_for<D>() * warp + 2 * warps_for<D>() * kQT * sizeof(float);
};

// Attention of 16 query rows of one head over every key (past, then current), the key tiles spread over the
// CTA's warps (each keeps its own running max / sum / output), merged at the end. Grid (ceil(L/16), H, B).
template <int D>
__global__ void __launch_bounds__(warps_for<D>() * 32) attention_kernel(
    const bf16* __restrict__ qkv, const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
    const float* __restrict__ sin_t, const bf16* __restrict__ bias, const bf16* __restrict__ past_k,
    const bf16* __restrict__ past_v, const bf16* __restrict__ cur_k, const bf16* __restrict__ cur_v,
    bf16* __restrict__ out, float* __restrict__ ws, int L, int C, int H, int Hkv, int P, float scale, int splits,
    int split_tiles) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = Smem<D>;
  constexpr int NW = warps_for<D>();
  constexpr int ld = S::ld, ldo = S::ldo, ldp = S::ldp;
  const int q0 = blockIdx.x * kQT, h = blockIdx.y / splits, split = blockIdx.y % splits, b = blockIdx.z;
  const int hk = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int keys = C + L, W = (H + 2 * Hkv) * D;
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  unsigned char* mine = smem + S::q + warp * S::warp;
  bf16* Ks = reinterpret_cast<bf16*>(mine);
  bf16* Vs = reinterpret_cast<bf16*>(mine + S::k);
  float* Ss = reinterpret_cast<float*>(mine + 2 * S::k);
  bf16* Ps = reinterpret_cast<bf16*>(mine + 2 * S::k + S::s);
  float* Os = reinterpret_cast<float*>(mine + 2 * S::k + S::s + S::p);
  float* As = reinterpret_cast<float*>(mine + 2 * S::k + S::s + S::p + S::o);
  float* Ms = reinterpret_cast<float*>(smem + S::q + NW * S::warp);  // [warps][16] running max
  float* Ls = Ms + NW * kQT;                                          // [warps][16] running sum

  load_q_rope<D, kQT, NW * 32>(Qs, ld, qkv, pos, cos_t, sin_t, b, h, q0, L, W, P);
  for (int i = lane; i < kQT * ldo; i += 32) Os[i] = 0.f;
  __syncthreads();

  // this lane's row and half of the tile's columns; it visits its 16 columns rotated by its row, so the 32
  // lanes of a warp read 32 different banks of the score tile
  const int r = lane >> 1, part = lane & 1;
  const int l = q0 + r;
  float m_run = -INFINITY, l_run = 0.f;
  const bf16* brow = bias + ((int64_t)b * L + (l < L ? l : 0)) * keys;
  const int64_t past_base = ((int64_t)b * Hkv + hk) * C;
  const int64_t cur_base = ((int64_t)b * Hkv + hk) * L;
  constexpr int kCols = kKT / 2;
  constexpr int kVec = 8;  // bf16 per 16-byte load

  // this CTA's key tiles: [split * split_tiles, (split + 1) * split_tiles), spread over its warps
  const int k_end = min(keys, (split + 1) * split_tiles * kKT);
  for (int k0 = (split * split_tiles + warp) * kKT; k0 < k_end; k0 += NW * kKT) {
    // this lane's bias values; a tile masked for every row of the warp is skipped
    float bv[kCols];
    bool open = false;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int k = k0 + part * kCols + ((c + r) & (kCols - 1));
      bv[c] = (l < L && k < keys) ? to_f(brow[k]) : -INFINITY;
      open |= bv[c] > kMasked;
    }
    if (!__any_sync(0xffffffffu, open)) continue;
    // K, V tile (keys past the end are zeros): asynchronous copies (cp.async) all issued, then one wait, where a
    // load-then-store loop waits for global memory once per 16 bytes
    for (int i = lane; i < kKT * D / kVec; i += 32) {
      const int kr = i / (D / kVec), c = (i % (D / kVec)) * kVec, k = k0 + kr;
      bf16* kd = Ks + kr * ld + c;
      bf16* vd = Vs + kr * ld + c;
      if (k < C) {
        const int64_t off = (past_base + k) * D + c;
        __pipeline_memcpy_async(kd, past_k + off, 16);
        __pipeline_memcpy_async(vd, past_v + off, 16);
      } else if (k < keys) {
        const int64_t off = (cur_base + (k - C)) * D + c;
        __pipeline_memcpy_async(kd, cur_k + off, 16);
        __pipeline_memcpy_async(vd, cur_v + off, 16);
      } else {
        *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
      }
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncwarp();
    // scores = Q K^T
#pragma unroll
    for (int n = 0; n < kKT / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kb;
        wmma::load_matrix_sync(qa, Qs + kk * 16, ld);
        wmma::load_matrix_sync(kb, Ks + n * 16 * ld + kk * 16, ld);
        wmma::mma_sync(acc, qa, kb, acc);
      }
      wmma::store_matrix_sync(Ss + n * 16, acc, kKT, wmma::mem_row_major);
    }
    __syncwarp();
    // online softmax over this tile, two lanes per row
    const float* srow = Ss + r * kKT + part * kCols;
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      bv[c] += srow[(c + r) & (kCols - 1)] * scale;
      mx = fmaxf(mx, bv[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m_run, mx);
    const bool none = m_new == -INFINITY;  // a padding row (l >= L)
    const float alpha = none ? 1.f : __expf(m_run - m_new);
    float sum = 0.f;
    bf16* prow = Ps + r * ldp + part * kCols;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const float p = none ? 0.f : __expf(bv[c] - m_new);
      sum += p;
      prow[(c + r) & (kCols - 1)] = to_bf(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l_run = l_run * alpha + sum;
    m_run = m_new;
    if (part == 0) As[r] = alpha;
    __syncwarp();
    for (int i = lane; i < kQT * D; i += 32) Os[(i / D) * ldo + i % D] *= As[i / D];
    __syncwarp();
    // O += P V
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + n * 16, ldo, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKT / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, Ps + kk * 16, ldp);
        wmma::load_matrix_sync(vb, Vs + kk * 16 * ld + n * 16, ld);
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(Os + n * 16, acc, ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (part == 0) {
    Ms[warp * kQT + r] = m_run;
    Ls[warp * kQT + r] = l_run;
  }
  __syncthreads();
  // merge the warps' partial results: the output (one split), or this split's (max, sum, unnormalised output)
  // in the workspace [B, H, splits, L, D + 2] for combine_kernel
  for (int i = threadIdx.x; i < kQT * D; i += blockDim.x) {
    const int rr = i / D, d = i % D, ll = q0 + rr;
    if (ll >= L) continue;
    float m = -INFINITY;
    for (int w = 0; w < NW; ++w) m = fmaxf(m, Ms[w * kQT + rr]);
    float num = 0.f, den = 0.f;
    if (m != -INFINITY) {
      for (int w = 0; w < NW; ++w) {
        const float mw = Ms[w * kQT + rr];
        if (mw == -INFINITY) continue;
        const float f = __expf(mw - m);
        den += f * Ls[w * kQT + rr];
        const float* ow = reinterpret_cast<const float*>(smem + S::q + w * S::warp + 2 * S::k + S::s + S::p);
        num += f * ow[rr * ldo + d];
      }
    }
    if (splits == 1) {
      out[((int64_t)b * L + ll) * H * D + (int64_t)h * D + d] = to_bf(den > 0.f ? num / den : 0.f);
    } else {
      float* row = ws + ((((int64_t)b * H + h) * splits + split) * L + ll) * (D + 2);
      row[d] = num;
      if (d == 0) {
        row[D] = m;
        row[D + 1] = den;
      }
    }
  }
}

// The splits' partial results of one (row, head) merged: grid (B*L, H), D threads (at most 256).
__global__ void combine_kernel(const float* __restrict__ ws, bf16* __restrict__ out, int L, int H, int D,
                               int splits) {
  const int bl = blockIdx.x, h = blockIdx.y, b = bl / L, l = bl % L;
  const float* base = ws + (((int64_t)b * H + h) * splits * L + l) * (D + 2);
  const int64_t stride = (int64_t)L * (D + 2);
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, base[s * stride + D]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    if (m != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float* part = base + s * stride;
        if (part[D] == -INFINITY) continue;
        const float f = __expf(part[D] - m);
        num += f * part[d];
        den += f * part[D + 1];
      }
    }
    out[((int64_t)b * L + l) * H * D + (int64_t)h * D + d] = to_bf(den > 0.f ? num / den : 0.f);
  }
}

// out = silu(gate) * up over rows of [gate | up]. One thread per 8 outputs when I % 8 == 0, else per output.
__global__ void silu_mul_kernel(const bf16* __restrict__ x, bf16* __restrict__ y, int64_t rows, int I) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (I % 8 == 0) {
    const int per = I / 8;
    if (i >= rows * per) return;
    const int64_t row = i / per, c = (i % per) * 8;
    const uint4 g4 = *reinterpret_cast<const uint4*>(x + row * 2 * I + c);
    const uint4 u4 = *reinterpret_cast<const uint4*>(x + row * 2 * I + I + c);
    const bf16* g = reinterpret_cast<const bf16*>(&g4);
    const bf16* u = reinterpret_cast<const bf16*>(&u4);
    uint4 o4;
    bf16* o = reinterpret_cast<bf16*>(&o4);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float gf = to_f(g[j]);
      o[j] = to_bf(gf / (1.f + __expf(-gf)) * to_f(u[j]));
    }
    *reinterpret_cast<uint4*>(y + row * I + c) = o4;
  } else {
    if (i >= rows * I) return;
    const int64_t row = i / I, c = i % I;
    const float gf = to_f(x[row * 2 * I + c]);
    y[i] = to_bf(gf / (1.f + __expf(-gf)) * to_f(x[row * 2 * I + I + c]));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Flash path (head dim <= 128), FA2 style: mma.sync m16n8k16 with a tile's scores, probabilities and the output
// accumulator in registers (the WMMA kernel above stores each tile's scores, probabilities and output to shared
// memory and reads them back), K/V tiles double-buffered with cp.async so the next tile's copy overlaps this one's
// math. Warp w of a CTA owns the query rows q0 + 16 w .. + 16 of one head; the CTA walks its split's key tiles.
// Same numerics as attention_kernel: fp32 scores and sums, probabilities rounded to bf16 before P V.

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
// d += a b: a 16x16 bf16 (row), b 16x8 bf16 (col), d 16x8 fp32
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// This lane's bias of key tile t for its two rows, as raw bf16 pairs (key, key + 1) per 8-key group: the loops load
// the next tile's bias while they compute this one (waiting for it cost a tenth of the attention time). A key past
// the end or a row past L reads -inf. `pairs`: the bias rows hold an even number of keys, so a pair is one 4-byte
// load.
template <int BN>
struct BiasTile {
  uint32_t v[BN / 8][2];
};
constexpr uint32_t kNegInfPair = 0xFF80FF80u;  // two bf16 -inf
template <int BN>
__device__ __forceinline__ void load_bias(BiasTile<BN>& bt, const bf16* const (&brow)[2], const int (&row)[2], int t,
                                          int L, int keys, int tq, bool pairs) {
#pragma unroll
  for (int n = 0; n < BN / 8; ++n)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = t * BN + n * 8 + 2 * tq;
      uint32_t v = kNegInfPair;
      if (row[r] < L && key < keys) {
        if (pairs) {
          v = *reinterpret_cast<const uint32_t*>(brow[r] + key);
        } else {
          const uint32_t lo = *reinterpret_cast<const uint16_t*>(brow[r] + key);
          const uint32_t hi = key + 1 < keys ? *reinterpret_cast<const uint16_t*>(brow[r] + key + 1) : 0xFF80u;
          v = lo | (hi << 16);
        }
      }
      bt.v[n][r] = v;
    }
}
// element e of an mma accumulator of group n (row e / 2, key 2 tq + e % 2) as fp32; masked (<= kMasked): -inf
template <int BN>
__device__ __forceinline__ float bias_at(const BiasTile<BN>& bt, int n, int e) {
  const uint32_t raw = bt.v[n][e >> 1];
  const float v = __uint_as_float((e & 1) ? (raw & 0xFFFF0000u) : (raw << 16));
  return v > kMasked ? v : -INFINITY;
}

// One key tile for a warp's 16 query rows (both flash kernels): S = Q K^T (BN / 8 tiles of 8 keys) times the scale
// plus the bias, the online softmax (the quad of lanes that holds a row agrees on its max and sum), and O += P V
// with P (bf16) as the A operand straight from the score accumulators and V^T by ldmatrix.trans.
template <int D, int BN>
__device__ __forceinline__ void attend_tile(const bf16* Kt, const bf16* Vt, int LD, const uint32_t (&qf)[D / 16][4],
                                            const BiasTile<BN>& bt, float scale, float (&o)[D / 8][4],
                                            float (&m)[2], float (&lsum)[2], int lane) {
  float s[BN / 8][4];
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) {
    s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {  // one ldmatrix.x4: the 8 keys' dims of kk and kk + 1
      uint32_t kb[4];
      ldmatrix_x4(kb, Kt + (n * 8 + (lane % 8)) * LD + kk * 16 + (lane / 8) * 8);
      mma_bf16(s[n], qf[kk], {kb[0], kb[1]});
      mma_bf16(s[n], qf[kk + 1], {kb[2], kb[3]});
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[n][e] = s[n][e] * scale + bias_at<BN>(bt, n, e);
      mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
    }
  }
  float alpha[2], sum[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float mnew = fmaxf(m[r], mx[r]);
    alpha[r] = mnew == -INFINITY ? 1.f : __expf(m[r] - mnew);
    m[r] = mnew;
  }
#pragma unroll
  for (int n = 0; n < BN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float p = m[r] == -INFINITY ? 0.f : __expf(s[n][e] - m[r]);
      s[n][e] = p;
      sum[r] += p;
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    lsum[r] = lsum[r] * alpha[r] + sum[r];
  }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    o[j][0] *= alpha[0];
    o[j][1] *= alpha[0];
    o[j][2] *= alpha[1];
    o[j][3] *= alpha[1];
  }
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                            pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int j = 0; j < D / 8; j += 2) {  // one ldmatrix.x4.trans: V^T of dims j and j + 1
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, Vt + (kk * 16 + (lane % 16)) * LD + (j + lane / 16) * 8);
      mma_bf16(o[j], pa, {vb[0], vb[1]});
      mma_bf16(o[j + 1], pa, {vb[2], vb[3]});
    }
  }
}

// A warp's partial result for merging: its output accumulator (unnormalised) as rows [16][ld] of fp32 at Ow, its
// rows' running max and sum at m16[0..16) / l16[0..16)
template <int D>
__device__ __forceinline__ void store_partial(float* Ow, int ld, const float (&o)[D / 8][4], const float (&m)[2],
                                              const float (&lsum)[2], float* m16, float* l16, int lane) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    *reinterpret_cast<float2*>(Ow + g * ld + j * 8 + 2 * tq) = make_float2(o[j][0], o[j][1]);
    *reinterpret_cast<float2*>(Ow + (g + 8) * ld + j * 8 + 2 * tq) = make_float2(o[j][2], o[j][3]);
  }
  if (tq == 0) {
    m16[g] = m[0];
    m16[g + 8] = m[1];
    l16[g] = lsum[0];
    l16[g + 8] = lsum[1];
  }
}

// shared memory: Q [16 NW][ld], then K and V, two stages each [2][BN][ld]
constexpr size_t flash_smem(int D, int nw, int bn) { return (size_t)(16 * nw + 4 * bn) * (D + 8) * sizeof(bf16); }

template <int D, int NW, int BN>
struct FlashSmem {
  static constexpr int ld = D + 8;  // rows padded by 16 bytes: ldmatrix's 8 row addresses hit different banks
  static constexpr size_t bytes = flash_smem(D, NW, BN);
};

// Grid (ceil(L / (16 NW)), H * splits, B), 32 NW threads. With splits > 1 a CTA takes split_tiles key tiles and
// writes its (unnormalised output, max, sum) rows to the workspace [B, H, splits, L, D + 2] for combine_kernel.
template <int D, int NW, int BN>
__global__ void __launch_bounds__(NW * 32) flash_kernel(
    const bf16* __restrict__ qkv, const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
    const float* __restrict__ sin_t, const bf16* __restrict__ bias, const bf16* __restrict__ past_k,
    const bf16* __restrict__ past_v, const bf16* __restrict__ cur_k, const bf16* __restrict__ cur_v,
    bf16* __restrict__ out, float* __restrict__ ws, int L, int C, int H, int Hkv, int P, float scale, int splits,
    int split_tiles) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int BM = 16 * NW, LD = FlashSmem<D, NW, BN>::ld, kThreads = NW * 32;
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + BM * LD;
  bf16* Vs = Ks + 2 * BN * LD;
  const int q0 = blockIdx.x * BM, h = blockIdx.y / splits, split = blockIdx.y % splits, b = blockIdx.z;
  const int hk = h / (H / Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  const int keys = C + L, W = (H + 2 * Hkv) * D, tiles = (keys + BN - 1) / BN;
  const int t_begin = split * split_tiles, t_end = min(tiles, t_begin + split_tiles);

  const int64_t past_base = ((int64_t)b * Hkv + hk) * C, cur_base = ((int64_t)b * Hkv + hk) * L;
  auto load_tile = [&](int t, int stage) {  // keys past the end are zeros (their probability is 0; 0 * NaN is not)
    const int k0 = t * BN;
    for (int i = threadIdx.x; i < BN * D / 8; i += kThreads) {
      const int kr = i / (D / 8), c = (i % (D / 8)) * 8, k = k0 + kr;
      bf16* kd = Ks + (stage * BN + kr) * LD + c;
      bf16* vd = Vs + (stage * BN + kr) * LD + c;
      if (k < C) {
        const int64_t off = (past_base + k) * D + c;
        __pipeline_memcpy_async(kd, past_k + off, 16);
        __pipeline_memcpy_async(vd, past_v + off, 16);
      } else if (k < keys) {
        const int64_t off = (cur_base + (k - C)) * D + c;
        __pipeline_memcpy_async(kd, cur_k + off, 16);
        __pipeline_memcpy_async(vd, cur_v + off, 16);
      } else {
        *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
      }
    }
    __pipeline_commit();
  };
  if (t_begin < t_end) load_tile(t_begin, 0);  // in flight while Q is rotated
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  const bf16* brow[2] = {bias + ((int64_t)b * L + (row[0] < L ? row[0] : 0)) * keys,
                         bias + ((int64_t)b * L + (row[1] < L ? row[1] : 0)) * keys};
  const bool pairs = keys % 2 == 0;
  BiasTile<BN> next_bias{};
  if (t_begin < t_end) load_bias<BN>(next_bias, brow, row, t_begin, L, keys, tq, pairs);

  load_q_rope<D, BM, kThreads>(Qs, LD, qkv, pos, cos_t, sin_t, b, h, q0, L, W, P);
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], Qs + (warp * 16 + (lane % 16)) * LD + kk * 16 + (lane / 16) * 8);

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.f, 0.f};

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    const BiasTile<BN> bt = next_bias;
    if (t + 1 < t_end) load_bias<BN>(next_bias, brow, row, t + 1, L, keys, tq, pairs);
    if (t + 1 < t_end) {
      load_tile(t + 1, stage ^ 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();
    attend_tile<D, BN>(Ks + stage * BN * LD, Vs + stage * BN * LD, LD, qf, bt, scale, o, m, lsum, lane);
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }
  // the output O / l (0 for a row whose every key is masked), or this split's partial rows
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int l = row[r];
    if (l >= L) continue;
    if (splits == 1) {
      const float inv = lsum[r] > 0.f ? 1.f / lsum[r] : 0.f;
      bf16* dst = out + ((int64_t)b * L + l) * H * D + (int64_t)h * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(dst + j * 8 + 2 * tq) = pack_bf16(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    } else {
      float* dst = ws + ((((int64_t)b * H + h) * splits + split) * L + l) * (D + 2);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        dst[j * 8 + 2 * tq] = o[j][2 * r];
        dst[j * 8 + 2 * tq + 1] = o[j][2 * r + 1];
      }
      if (tq == 0) {
        dst[D] = m[r];
        dst[D + 1] = lsum[r];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Short queries (block steps): flash_warps_kernel. One CTA per (16 query rows, head, split); its NW warps share the
// rows and take the split's key tiles in turn, each warp with its own double-buffered K/V tiles (no CTA barrier in
// the loop), merged through shared memory at the end. The presents are fused: the tiles of current keys are
// rotated from qkv on the fly, and the CTA that owns them (first query tile, first query head of the group) writes
// present_key / present_value, so a step runs this kernel alone (and combine_kernel when the keys are split),
// where the flash kernel needs the presents kernel before it.

// keys k0 .. k0 + rows (BN by default) of one K/V head into shared memory (row stride ld), by `nthreads` threads
// from `tid`: cached keys by cp.async (committed by the caller), current keys rotated from qkv (and written to the
// presents when pk_out is set; left to the caller when `current` is false), keys past the end as zeros
template <int D, int BN>
__device__ __forceinline__ void load_kv_fused(bf16* Kd, bf16* Vd, int ld, int k0, int tid, int nthreads,
                                              const bf16* __restrict__ past_k, const bf16* __restrict__ past_v,
                                              int64_t past_base, const bf16* __restrict__ qkv,
                                              const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
                                              const float* __restrict__ sin_t, int b, int hk, int L, int C, int H,
                                              int Hkv, int P, bf16* __restrict__ pk_out, bf16* __restrict__ pv_out,
                                              int rows = BN, bool current = true) {
  constexpr int half = D / 2, chunks = D / 8;
  const int keys = C + L, W = (H + 2 * Hkv) * D;
  for (int i = tid; i < rows * chunks; i += nthreads) {
    const int kr = i / chunks, c = (i % chunks) * 8, k = k0 + kr;
    bf16* kd = Kd + kr * ld + c;
    bf16* vd = Vd + kr * ld + c;
    if (k < C) {
      const int64_t off = (past_base + k) * D + c;
      __pipeline_memcpy_async(kd, past_k + off, 16);
      __pipeline_memcpy_async(vd, past_v + off, 16);
    } else if (k < keys) {
      if (!current) continue;  // the caller's (flash_split_kernel's row prologue)
      const int l = k - C;
      const bf16* row = qkv + ((int64_t)b * L + l) * W;
      const int64_t po = (((int64_t)b * Hkv + hk) * L + l) * D;
      const uint4 v4 = *reinterpret_cast<const uint4*>(row + (int64_t)(H + Hkv + hk) * D + c);
      *reinterpret_cast<uint4*>(vd) = v4;
      if (pv_out) *reinterpret_cast<uint4*>(pv_out + po + c) = v4;
      if (c < half) {  // this thread rotates the pair of chunks (c, c + half)
        const bf16* kin = row + (int64_t)(H + hk) * D;
        const uint4 a4 = *reinterpret_cast<const uint4*>(kin + c);
        const uint4 b4 = *reinterpret_cast<const uint4*>(kin + c + half);
        const int64_t p = clamp_pos(pos[(int64_t)b * L + l], P);
        float4 cs[2], sn[2];
        load8(cs, cos_t + p * half + c);
        load8(sn, sin_t + p * half + c);
        uint4 lo4, hi4;
        rope8(a4, b4, cs, sn, lo4, hi4);
        *reinterpret_cast<uint4*>(kd) = lo4;
        *reinterpret_cast<uint4*>(kd + half) = hi4;
        if (pk_out) {
          *reinterpret_cast<uint4*>(pk_out + po + c) = lo4;
          *reinterpret_cast<uint4*>(pk_out + po + c + half) = hi4;
        }
      }
    } else {
      *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
    }
  }
}

constexpr size_t warps_smem(int D, int nw, int bn) {
  return (size_t)16 * (D + 8) * sizeof(bf16) + (size_t)nw * 4 * bn * (D + 8) * sizeof(bf16) + 2 * nw * 16 * sizeof(float);
}

template <int D, int NW, int BN>
struct WarpsSmem {
  static constexpr int ld = D + 8;
  static constexpr size_t q = (size_t)16 * ld * sizeof(bf16);
  static constexpr size_t warp = (size_t)4 * BN * ld * sizeof(bf16);  // K, V x two stages; then its partial O
  static_assert(warp >= (size_t)16 * D * sizeof(float), "a warp's tiles hold its partial output");
  static constexpr size_t bytes = q + NW * warp + 2 * NW * 16 * sizeof(float);
  static_assert(bytes == warps_smem(D, NW, BN), "warps_smem is this layout's size");
};

// Grid (ceil(L / 16), H * splits, B), 32 NW threads; workspace as flash_kernel's.
template <int D, int NW, int BN>
__global__ void __launch_bounds__(NW * 32) flash_warps_kernel(
    const bf16* __restrict__ qkv, const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
    const float* __restrict__ sin_t, const bf16* __restrict__ bias, const bf16* __restrict__ past_k,
    const bf16* __restrict__ past_v, bf16* __restrict__ present_k, bf16* __restrict__ present_v,
    bf16* __restrict__ out, float* __restrict__ ws, int L, int C, int H, int Hkv, int P, float scale, int splits,
    int split_tiles) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = WarpsSmem<D, NW, BN>;
  constexpr int LD = S::ld, kThreads = NW * 32;
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  const int q0 = blockIdx.x * 16, h = blockIdx.y / splits, split = blockIdx.y % splits, b = blockIdx.z;
  const int hk = h / (H / Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  bf16* Ks = reinterpret_cast<bf16*>(smem + S::q + warp * S::warp);  // [2][BN][LD]
  bf16* Vs = Ks + 2 * BN * LD;
  float* Ms = reinterpret_cast<float*>(smem + S::q + NW * S::warp);  // [NW][16]
  float* Ls = Ms + NW * 16;
  const int keys = C + L, W = (H + 2 * Hkv) * D, tiles = (keys + BN - 1) / BN;
  const int t_begin = split * split_tiles, t_end = min(tiles, t_begin + split_tiles);
  const int64_t past_base = ((int64_t)b * Hkv + hk) * C;
  const bool owner = blockIdx.x == 0 && h % (H / Hkv) == 0;  // writes the presents of the tiles it loads
  auto load = [&](int t, int stage) {
    load_kv_fused<D, BN>(Ks + stage * BN * LD, Vs + stage * BN * LD, LD, t * BN, lane, 32, past_k, past_v, past_base,
                         qkv, pos, cos_t, sin_t, b, hk, L, C, H, Hkv, P, owner ? present_k : nullptr,
                         owner ? present_v : nullptr);
    __pipeline_commit();
  };
  if (t_begin + warp < t_end) load(t_begin + warp, 0);  // in flight while Q is rotated
  const int row[2] = {q0 + g, q0 + g + 8};
  const bf16* brow[2] = {bias + ((int64_t)b * L + (row[0] < L ? row[0] : 0)) * keys,
                         bias + ((int64_t)b * L + (row[1] < L ? row[1] : 0)) * keys};
  const bool pairs = keys % 2 == 0;
  BiasTile<BN> next_bias{};
  if (t_begin + warp < t_end) load_bias<BN>(next_bias, brow, row, t_begin + warp, L, keys, tq, pairs);

  load_q_rope<D, 16, kThreads>(Qs, LD, qkv, pos, cos_t, sin_t, b, h, q0, L, W, P);
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], Qs + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.f, 0.f};

  int stage = 0;
  for (int t = t_begin + warp; t < t_end; t += NW, stage ^= 1) {
    const BiasTile<BN> bt = next_bias;
    if (t + NW < t_end) load_bias<BN>(next_bias, brow, row, t + NW, L, keys, tq, pairs);
    if (t + NW < t_end) {
      load(t + NW, stage ^ 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncwarp();
    attend_tile<D, BN>(Ks + stage * BN * LD, Vs + stage * BN * LD, LD, qf, bt, scale, o, m, lsum, lane);
    __syncwarp();  // the warp is done with this stage before the next iteration refills it
  }
  // merge the warps: each leaves (max, sum, unnormalised O) in shared memory (O over its own tiles)
  __pipeline_wait_prior(0);
  __syncwarp();
  store_partial<D>(reinterpret_cast<float*>(Ks), D, o, m, lsum, Ms + warp * 16, Ls + warp * 16, lane);  // [16][D]
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * D; i += kThreads) {
    const int r = i / D, d = i % D, l = q0 + r;
    if (l >= L) continue;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mm = fmaxf(mm, Ms[w * 16 + r]);
    float num = 0.f, den = 0.f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        const float mw = Ms[w * 16 + r];
        if (mw == -INFINITY) continue;
        const float f = __expf(mw - mm);
        den += f * Ls[w * 16 + r];
        num += f * reinterpret_cast<const float*>(smem + S::q + w * S::warp)[r * D + d];
      }
    }
    if (splits == 1) {
      out[((int64_t)b * L + l) * H * D + (int64_t)h * D + d] = to_bf(den > 0.f ? num / den : 0.f);
    } else {
      float* dst = ws + ((((int64_t)b * H + h) * splits + split) * L + l) * (D + 2);
      dst[d] = num;
      if (d == 0) {
        dst[D] = mm;
        dst[D + 1] = den;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Block steps (L <= 64): flash_split_kernel. One CTA per (key split, head, batch row) holds every query row of the
// head, so a split's keys are read once for all rows and the grid fills the GPU (32 heads x 4 splits on 132 SMs; the
// warps kernel's 2 query tiles x 32 heads left half of the SMs idle and ran each CTA's ~4,400 instructions per warp
// at 2 warps per scheduler). Warp w takes row group w % RG (RG = ceil(L / 16)) and the key tiles w / RG, + KG, ...
// of its split (KG = NW / RG key groups). The CTA copies its split in rounds of RK keys (double-buffered, all threads:
// cached keys by cp.async, current keys rotated on the fly, their presents written by the CTA of the group's first
// query head). The warps of a row group are merged through shared memory with one weight per (row, warp); with
// more than one split each CTA leaves its (unnormalised output, max, sum) rows in the workspace and the last CTA of
// the (head, batch row) to finish (a counter per stream, reset by that CTA) merges the splits: one kernel per step.
// On sm_90 the splits of a head run as one thread block cluster instead, when all clusters fit in one wave (plan_for
// asks cudaOccupancyMaxActiveClusters): the rows stay in shared memory and each CTA merges every splits-th row from
// its peers'. LLaDA-8B's block step on an H200, alone: clusters of 3 splits 10.1 us, the last-CTA merge with 4
// splits 11.5, clusters of 4 17.8 (a second wave of clusters), the warps kernel before it 17.0; in the 8B graph
// (last-CTA merge) 12 us per layer, was 17. A %globaltimer trace (-DDLLM_TRT_PHASES, cold L2) of the last-CTA
// version: the rows' RoPE prologue ~3 us, the key tiles ~2, the warps' merge and partial rows ~2, the count ~1, the
// last CTA's merge ~3 (the cluster's ~0.6 + 2).
constexpr int kSplitMaxSplits = 16;

#ifdef DLLM_TRT_PHASES  // a profiling build: thread 0 of each CTA stamps %globaltimer at the kernel's phases
__device__ unsigned long long g_phases[4096][8];
__device__ __forceinline__ void phase(int i) {
  if (threadIdx.x != 0) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  const int cta = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  if (cta < 4096) g_phases[cta][i] = t;
}
#else
__device__ __forceinline__ void phase(int) {}
#endif

// The step's rows for flash_split_kernel, one pass: Q rows 0 .. L of head h with RoPE into Qs (rows L .. 64 zeros)
// and, for the keys C + l (this step's tokens) in [k0, k0 + nk) (the split's first round), the rotated key and
// the value into Ks / Vs at row C + l - k0 (and the presents when pk_out is set). A thread loads its row's
// position once and every q / k / v chunk and table entry before it uses one: rotating the current keys inside
// the round's copy and then Q waited on global memory twice in a row (2 us of the last split's 5 on an H200).
template <int D, int THREADS>
__device__ __forceinline__ void load_rows_rope(bf16* Qs, bf16* Ks, bf16* Vs, int ld, int k0, int nk,
                                               const bf16* __restrict__ qkv, const int64_t* __restrict__ pos,
                                               const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                               int b, int h, int hk, int L, int C, int H, int Hkv, int P,
                                               bf16* __restrict__ pk_out, bf16* __restrict__ pv_out) {
  constexpr int half = D / 2, per_row = half / 8;
  const int W = (H + 2 * Hkv) * D;
  for (int u = threadIdx.x; u < L * per_row; u += THREADS) {
    const int l = u / per_row, c = (u % per_row) * 8, k = C + l;
    const bool kin = k >= k0 && k < k0 + nk;
    const int64_t p = clamp_pos(pos[(int64_t)b * L + l], P);
    const bf16* row = qkv + ((int64_t)b * L + l) * W;
    const uint4 q1 = *reinterpret_cast<const uint4*>(row + (int64_t)h * D + c);
    const uint4 q2 = *reinterpret_cast<const uint4*>(row + (int64_t)h * D + c + half);
    uint4 k1 = make_uint4(0, 0, 0, 0), k2 = k1, v1 = k1, v2 = k1;
    if (kin) {
      k1 = *reinterpret_cast<const uint4*>(row + (int64_t)(H + hk) * D + c);
      k2 = *reinterpret_cast<const uint4*>(row + (int64_t)(H + hk) * D + c + half);
      v1 = *reinterpret_cast<const uint4*>(row + (int64_t)(H + Hkv + hk) * D + c);
      v2 = *reinterpret_cast<const uint4*>(row + (int64_t)(H + Hkv + hk) * D + c + half);
    }
    float4 cs[2], sn[2];
    load8(cs, cos_t + p * half + c);
    load8(sn, sin_t + p * half + c);
    uint4 lo4, hi4;
    rope8(q1, q2, cs, sn, lo4, hi4);
    *reinterpret_cast<uint4*>(Qs + l * ld + c) = lo4;
    *reinterpret_cast<uint4*>(Qs + l * ld + c + half) = hi4;
    if (kin) {
      rope8(k1, k2, cs, sn, lo4, hi4);
      bf16* kd = Ks + (k - k0) * ld;
      bf16* vd = Vs + (k - k0) * ld;
      *reinterpret_cast<uint4*>(kd + c) = lo4;
      *reinterpret_cast<uint4*>(kd + c + half) = hi4;
      *reinterpret_cast<uint4*>(vd + c) = v1;
      *reinterpret_cast<uint4*>(vd + c + half) = v2;
      if (pk_out) {
        const int64_t po = (((int64_t)b * Hkv + hk) * L + l) * D + c;
        *reinterpret_cast<uint4*>(pk_out + po) = lo4;
        *reinterpret_cast<uint4*>(pk_out + po + half) = hi4;
        *reinterpret_cast<uint4*>(pv_out + po) = v1;
        *reinterpret_cast<uint4*>(pv_out + po + half) = v2;
      }
    }
  }
  for (int i = threadIdx.x; i < (64 - L) * (D / 8); i += THREADS)  // rows past L: zeros for ldmatrix
    *reinterpret_cast<uint4*>(Qs + (L + i / (D / 8)) * ld + (i % (D / 8)) * 8) = make_uint4(0, 0, 0, 0);
}

template <int D, int NW, int RK>
struct SplitSmem {
  static constexpr int ld = D + 8;
  static constexpr size_t q = (size_t)64 * ld * sizeof(bf16);            // Q of up to 4 row groups
  static constexpr size_t stage = (size_t)2 * RK * ld * sizeof(bf16);    // K and V of one round
  static constexpr size_t ml = (size_t)2 * NW * 16 * sizeof(float);      // each warp's row max and sum
  static constexpr size_t weights = (size_t)2 * kSplitMaxSplits * 64 * sizeof(float);  // merge weights per row
  static constexpr size_t bytes = q + 2 * stage + ml + weights;
  static constexpr int old = D + 4;  // rows of a warp's partial output, padded: its 8 row groups hit different banks
  static_assert((size_t)NW * 16 * old * sizeof(float) <= 2 * stage, "the warps' partial outputs fit in the stages");
  // the cluster variant also keeps the split's 64 rows there
  static constexpr bool cluster_fits = (size_t)(NW * 16 + 64) * old * sizeof(float) <= 2 * stage;
};
constexpr size_t split_smem(int D, int nw, int rk) {
  return (size_t)64 * (D + 8) * 2 + (size_t)4 * rk * (D + 8) * 2 + (size_t)2 * nw * 16 * 4 +
         (size_t)2 * kSplitMaxSplits * 64 * 4;
}

// Grid (splits, H, B), 32 NW threads. Split s covers keys [s * split_keys, ...) (split_keys a multiple of 16).
// ws [B, H, splits, L, D + 2] and counters [B * H] when splits > 1; counters == nullptr: combine_kernel merges.
// CL (sm_90, launched as clusters of the `splits` CTAs of a head, RK = 128): the splits' rows stay in shared
// memory and each CTA of the cluster merges every splits-th row from its peers' (distributed shared memory): no
// workspace, counter or second pass over L2.
template <int D, int NW, int RK, bool CL = false>
__global__ void __launch_bounds__(NW * 32) flash_split_kernel(
    const bf16* __restrict__ qkv, const int64_t* __restrict__ pos, const float* __restrict__ cos_t,
    const float* __restrict__ sin_t, const bf16* __restrict__ bias, const bf16* __restrict__ past_k,
    const bf16* __restrict__ past_v, bf16* __restrict__ present_k, bf16* __restrict__ present_v,
    bf16* __restrict__ out, float* __restrict__ ws, unsigned* __restrict__ counters, int L, int C, int H, int Hkv,
    int P, float scale, int splits, int split_keys) {
  constexpr int BN = 16, TPR = RK / BN, kThreads = NW * 32;
  using S = SplitSmem<D, NW, RK>;
  constexpr int LD = S::ld;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* stage_base = reinterpret_cast<bf16*>(smem + S::q);  // [2][K RK | V RK][LD]
  float* Ms = reinterpret_cast<float*>(smem + S::q + 2 * S::stage);  // [NW][16]
  float* Ls = Ms + NW * 16;
  float* Wt = Ls + NW * 16;  // merge weights [kSplitMaxSplits or NW][64]
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  const int RG = (L + 15) / 16, KG = NW / RG, rg = warp % RG, kg = warp / RG;
  const bool computes = kg < KG;
  const int keys = C + L, all_tiles = (keys + BN - 1) / BN;
  const int k_begin = split * split_keys;
  const int ntiles = min(all_tiles * BN, k_begin + split_keys) / BN - k_begin / BN;  // this split's tiles
  const int rounds = (ntiles + TPR - 1) / TPR;
  const int64_t past_base = ((int64_t)b * Hkv + hk) * C;
  const bool owner = h % (H / Hkv) == 0;
  auto load_round = [&](int r, int st) {  // round 0's current keys: load_rows_rope
    bf16* Kd = stage_base + (size_t)st * 2 * RK * LD;
    const int rows = min(TPR, ntiles - r * TPR) * BN;
    load_kv_fused<D, RK>(Kd, Kd + RK * LD, LD, k_begin + r * RK, threadIdx.x, kThreads, past_k, past_v, past_base,
                         qkv, pos, cos_t, sin_t, b, hk, L, C, H, Hkv, P, owner ? present_k : nullptr,
                         owner ? present_v : nullptr, rows, r > 0);
    __pipeline_commit();
  };
  phase(0);
  if (rounds > 0) load_round(0, 0);  // in flight while Q is rotated
  phase(1);

  const int row[2] = {rg * 16 + g, rg * 16 + g + 8};
  const bf16* brow[2] = {bias + ((int64_t)b * L + (row[0] < L ? row[0] : 0)) * keys,
                         bias + ((int64_t)b * L + (row[1] < L ? row[1] : 0)) * keys};
  const bool pairs = keys % 2 == 0;
  const int t0 = k_begin / BN;  // the split's first tile (bias tiles count from key 0)
  BiasTile<BN> next_bias{};
  if (computes && kg < ntiles) load_bias<BN>(next_bias, brow, row, t0 + kg, L, keys, tq, pairs);

  load_rows_rope<D, kThreads>(Qs, stage_base, stage_base + RK * LD, LD, k_begin,
                              rounds > 0 ? min(TPR, ntiles) * BN : 0, qkv, pos, cos_t, sin_t, b, h, hk, L, C, H, Hkv,
                              P, owner ? present_k : nullptr, owner ? present_v : nullptr);
  __syncthreads();
  phase(2);
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], Qs + (rg * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.f, 0.f};

  int t = kg;  // this warp's next tile (of the split)
  for (int r = 0, st = 0; r < rounds; ++r, st ^= 1) {
    if (r + 1 < rounds) {
      load_round(r + 1, st ^ 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // every thread's copies of round r have landed
    const bf16* Kt = stage_base + (size_t)st * 2 * RK * LD;
    if (computes) {
      for (; t < min(ntiles, (r + 1) * TPR); t += KG) {
        const BiasTile<BN> bt = next_bias;
        if (t + KG < ntiles) load_bias<BN>(next_bias, brow, row, t0 + t + KG, L, keys, tq, pairs);
        const int i = t - r * TPR;
        attend_tile<D, BN>(Kt + i * BN * LD, Kt + (RK + i * BN) * LD, LD, qf, bt, scale, o, m, lsum, lane);
      }
    }
    __syncthreads();  // round r's stage is free for round r + 2
  }
  phase(3);

  // merge the key groups of each row group: warp w's partial output [16][D] overlays the stages
  constexpr int OLD = S::old;
  float* Ow = reinterpret_cast<float*>(smem + S::q) + (size_t)warp * 16 * OLD;
  if (computes) store_partial<D>(Ow, OLD, o, m, lsum, Ms + warp * 16, Ls + warp * 16, lane);
  __syncthreads();
  // one weight per (row, key group): exp(m_w - M) (/ the row's sum with one split); the row's M and sum in mrow
  float* mrow = Wt + KG * 64;  // [64] the merged max per row, [64] its sum
  if (threadIdx.x < RG * 16) {
    const int rr = threadIdx.x, grp = rr / 16, r16 = rr % 16;
    float mw[NW], lw[NW], f[NW];
    float mm = -INFINITY, den = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      mw[w] = w < KG ? Ms[(w * RG + grp) * 16 + r16] : -INFINITY;
      lw[w] = w < KG ? Ls[(w * RG + grp) * 16 + r16] : 0.f;
      mm = fmaxf(mm, mw[w]);
    }
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      f[w] = (mm == -INFINITY || mw[w] == -INFINITY) ? 0.f : __expf(mw[w] - mm);
      den += f[w] * lw[w];
    }
    const float norm = splits == 1 ? (den > 0.f ? 1.f / den : 0.f) : 1.f;
#pragma unroll
    for (int w = 0; w < NW; ++w)
      if (w < KG) Wt[w * 64 + rr] = f[w] * norm;
    mrow[rr] = mm;
    mrow[64 + rr] = den;
  }
  __syncthreads();
  // this split's rows: the workspace [L][D + 2] (max and sum at D, D + 1), or (CL) shared memory [L][OLD] after the
  // warps' partials (max and sum stay in mrow)
  constexpr int PLD = CL ? OLD : D + 2;
  float* part = CL ? reinterpret_cast<float*>(smem + S::q) + (size_t)NW * 16 * OLD
                   : (splits > 1 ? ws + (((int64_t)b * H + h) * splits + split) * L * (D + 2) : nullptr);
  for (int i = threadIdx.x; i < L * (D / 4); i += kThreads) {
    const int rr = i / (D / 4), d = (i % (D / 4)) * 4, grp = rr / 16, r16 = rr % 16;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      if (w >= KG) break;
      const float f = Wt[w * 64 + rr];
      const float4 v = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(smem + S::q) +
                                                        ((size_t)(w * RG + grp) * 16 + r16) * OLD + d);
      acc.x += f * v.x;
      acc.y += f * v.y;
      acc.z += f * v.z;
      acc.w += f * v.w;
    }
    if (splits == 1) {
      __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + ((int64_t)b * L + rr) * H * D + (int64_t)h * D + d);
      dst[0] = __floats2bfloat162_rn(acc.x, acc.y);
      dst[1] = __floats2bfloat162_rn(acc.z, acc.w);
    } else {
      float2* dst = reinterpret_cast<float2*>(part + (int64_t)rr * PLD + d);
      dst[0] = make_float2(acc.x, acc.y);
      dst[1] = make_float2(acc.z, acc.w);
      if (!CL && d == 0) *reinterpret_cast<float2*>(part + (int64_t)rr * PLD + D) = make_float2(mrow[rr], mrow[64 + rr]);
    }
  }
  phase(4);
  if constexpr (CL) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (splits > 1) {
      namespace cg = cooperative_groups;
      cg::cluster_group cluster = cg::this_cluster();
      cluster.sync();  // every split's rows are in its shared memory
      phase(5);
      float* Wc = Wt + kSplitMaxSplits * 64;  // [splits][64]: this CTA's rows' weights
      const int mine = (L - split + splits - 1) / splits;  // rows split, split + splits, ...
      if (threadIdx.x < mine) {
        const int rr = split + threadIdx.x * splits;
        float ms[8], ds[8], mm = -INFINITY, den = 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (q >= splits) break;
          const float* peer = cluster.map_shared_rank(mrow, q);
          ms[q] = peer[rr];
          ds[q] = peer[64 + rr];
          mm = fmaxf(mm, ms[q]);
        }
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (q >= splits) break;
          ms[q] = (mm == -INFINITY || ms[q] == -INFINITY) ? 0.f : __expf(ms[q] - mm);
          den += ms[q] * ds[q];
        }
        const float norm = den > 0.f ? 1.f / den : 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (q < splits) Wc[q * 64 + threadIdx.x] = ms[q] * norm;
      }
      __syncthreads();
      for (int i = threadIdx.x; i < mine * (D / 4); i += kThreads) {
        const int j = i / (D / 4), rr = split + j * splits, d = (i % (D / 4)) * 4;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (q >= splits) break;
          const float f = Wc[q * 64 + j];
          const float4 v = *reinterpret_cast<const float4*>(cluster.map_shared_rank(part, q) + (size_t)rr * OLD + d);
          acc.x += f * v.x;
          acc.y += f * v.y;
          acc.z += f * v.z;
          acc.w += f * v.w;
        }
        __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + ((int64_t)b * L + rr) * H * D + (int64_t)h * D + d);
        dst[0] = __floats2bfloat162_rn(acc.x, acc.y);
        dst[1] = __floats2bfloat162_rn(acc.z, acc.w);
      }
      cluster.sync();  // the peers have read this CTA's rows before it exits
      phase(6);
    }
#endif
    return;
  }
  if (splits == 1 || counters == nullptr) return;

  // the last CTA of this (head, batch row) merges the splits
  __shared__ unsigned last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this CTA's partial rows are visible before its count
    last = atomicAdd(&counters[b * H + h], 1u) == (unsigned)(splits - 1);
  }
  __syncthreads();
  phase(5);
  if (!last) return;
  __threadfence();
  const float* base = ws + ((int64_t)b * H + h) * splits * L * (D + 2);
  const int64_t sstride = (int64_t)L * (D + 2);
  // every split's (max, sum) per row at once (a loop per row waited on L2 once per split and value: 5 us)
  float* Dn = Wt + kSplitMaxSplits * 64;
  for (int i = threadIdx.x; i < splits * L; i += kThreads) {
    const int sp = i / L, rr = i % L;
    const float2 md = __ldcg(reinterpret_cast<const float2*>(base + sp * sstride + (int64_t)rr * (D + 2) + D));
    Wt[sp * 64 + rr] = md.x;
    Dn[sp * 64 + rr] = md.y;
  }
  __syncthreads();
  if (threadIdx.x < L) {  // per row: the weight of split s = exp(m_s - M) / sum
    const int rr = threadIdx.x;
    float mm = -INFINITY, den = 0.f;
    for (int sp = 0; sp < splits; ++sp) mm = fmaxf(mm, Wt[sp * 64 + rr]);
    for (int sp = 0; sp < splits; ++sp) {
      const float ms = Wt[sp * 64 + rr];
      const float f = (mm == -INFINITY || ms == -INFINITY) ? 0.f : __expf(ms - mm);
      Wt[sp * 64 + rr] = f;
      den += f * Dn[sp * 64 + rr];
    }
    const float norm = den > 0.f ? 1.f / den : 0.f;
    for (int sp = 0; sp < splits; ++sp) Wt[sp * 64 + rr] *= norm;
  }
  __syncthreads();
  // outputs in batches of 4 per thread, 4 splits' loads in flight per output
  constexpr int kB = 4;
  const int n2 = L * (D / 2);
  for (int i0 = threadIdx.x; i0 < n2; i0 += kThreads * kB) {
    float2 acc[kB];
#pragma unroll
    for (int j = 0; j < kB; ++j) acc[j] = make_float2(0.f, 0.f);
    for (int s0 = 0; s0 < splits; s0 += 4) {
      float2 v[kB][4];
#pragma unroll
      for (int j = 0; j < kB; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int i = i0 + j * kThreads, sp = s0 + u;
          v[j][u] = i < n2 && sp < splits
                        ? __ldcg(reinterpret_cast<const float2*>(base + sp * sstride +
                                                                 (int64_t)(i / (D / 2)) * (D + 2) + (i % (D / 2)) * 2))
                        : make_float2(0.f, 0.f);
        }
#pragma unroll
      for (int j = 0; j < kB; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int i = i0 + j * kThreads, sp = s0 + u;
          const float f = i < n2 && sp < splits ? Wt[sp * 64 + i / (D / 2)] : 0.f;
          acc[j].x += f * v[j][u].x;
          acc[j].y += f * v[j][u].y;
        }
    }
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      const int i = i0 + j * kThreads;
      if (i >= n2) break;
      const int rr = i / (D / 2), d = (i % (D / 2)) * 2;
      *reinterpret_cast<__nv_bfloat162*>(out + ((int64_t)b * L + rr) * H * D + (int64_t)h * D + d) =
          __floats2bfloat162_rn(acc[j].x, acc[j].y);
    }
  }
  if (threadIdx.x == 0) counters[b * H + h] = 0u;  // ready for the next launch on this stream
  phase(6);
}

// ---------------------------------------------------------------------------------------------------------------
// Which kernel, and how many CTAs share the keys of a (query tile, head)
struct Plan {
  int kernel;       // kWmma: attention_kernel (any D); kFlash: flash_kernel, kWarps: flash_warps_kernel,
                    // kSplit: flash_split_kernel (D <= 128)
  int nw, bn;       // flash: warps per CTA (16 query rows each); warps: warps per CTA over the key tiles; keys per tile
                    // (kSplit: keys per round; its tiles are 16 keys)
  int splits, split_tiles;
};
constexpr int kWmma = 0, kFlash = 1, kWarps = 2, kSplit = 3, kSplitCounters = 4;  // 4: kSplit without clusters
constexpr int kSplitTile = 16;

// Counters of flash_split_kernel's last-CTA merge: zero at load, each reset by the CTA that read it. One slot of
// counters per (device, stream), as kernels of two streams may run at once; past kCounterSlots streams (or
// B * H > kSlotCounters) the kernel writes its splits and combine_kernel merges them.
constexpr int kCounterSlots = 8, kSlotCounters = 4096;
__device__ unsigned g_split_counters[kCounterSlots * kSlotCounters];

unsigned* split_counters(cudaStream_t stream, long n) {
  if (n > kSlotCounters) return nullptr;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return nullptr;
  static std::mutex mu;
  static std::vector<std::pair<int, cudaStream_t>> owners;  // slot i of device d: the i-th entry of d
  std::lock_guard<std::mutex> lock(mu);
  int slot = 0;
  bool found = false;
  for (const auto& [d, st] : owners) {
    if (d != dev) continue;
    if (st == stream) {
      found = true;
      break;
    }
    ++slot;
  }
  if (!found) {
    if (slot >= kCounterSlots) return nullptr;
    owners.emplace_back(dev, stream);
  }
  void* base = nullptr;
  if (cudaGetSymbolAddress(&base, g_split_counters) != cudaSuccess) return nullptr;
  return static_cast<unsigned*>(base) + (size_t)slot * kSlotCounters;
}

int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 132;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  return sms;
}

// Split the key tiles over CTAs when (query tiles x heads x batch) alone leaves the GPU short of `target` CTAs (a
// 32-token block step has 1 or 2 query tiles x 32 heads on 132 SMs), each split at least `min_tiles` tiles.
// Splits end on tile boundaries.
void split_keys(Plan& p, long ctas, long tiles, long target, long min_tiles) {
  long splits = ctas < target ? (target + ctas - 1) / ctas : 1;
  splits = std::max(1L, std::min(splits, tiles / std::max(1L, min_tiles)));
  const long split_tiles = (tiles + splits - 1) / splits;
  p.split_tiles = (int)split_tiles;
  p.splits = (int)((tiles + split_tiles - 1) / split_tiles);
}

// The largest dynamic shared memory a block may opt in to: 227 KB on sm_90, 163 KB on sm_80 / sm_87 (Jetson
// Orin), 99 KB on sm_86 / sm_89 / sm_120 (RTX): the plan picks configurations that fit.
size_t smem_limit() {
  static const size_t limit = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    // $DLLM_TRT_CUDA_SMEM_LIMIT (bytes, lower only): plan as for a smaller GPU (tests of the RTX configurations)
    if (const char* env = std::getenv("DLLM_TRT_CUDA_SMEM_LIMIT"); env != nullptr && std::atol(env) > 0)
      n = std::min(n, (int)std::atol(env));
    return (size_t)n;
  }();
  return limit;
}

size_t smem_of(const Plan& p, int D) {
  if (p.kernel == kSplit || p.kernel == kSplitCounters) return split_smem(D, p.nw, p.bn);
  if (p.kernel == kWarps) return warps_smem(D, p.nw, p.bn);
  if (p.kernel == kFlash) return flash_smem(D, p.nw, p.bn);
  switch (D) {
    case 32: return Smem<32>::total;
    case 64: return Smem<64>::total;
    case 128: return Smem<128>::total;
    default: return Smem<256>::total;
  }
}

int wmma_warps(int D) {
  switch (D) {
    case 32: return warps_for<32>();
    case 64: return warps_for<64>();
    case 128: return warps_for<128>();
    default: return warps_for<256>();
  }
}

// The default: up to D = 128, the warps kernel for short queries and the flash kernel for long ones (its warps by
// query length), the WMMA kernel for D = 256 (the flash kernel's output accumulator would not fit in registers).
// $DLLM_TRT_ATTENTION_PLAN = "kernel:warps:keys_per_tile:splits" (e.g. "2:8:16:1") fixes the configuration of
// every CacheAttention with D <= 128, for benchmarks that compare kernels inside a model (kernel_breakdown.py).
const Plan* plan_override() {
  static const Plan* plan = []() -> const Plan* {
    static Plan p{};
    const char* env = std::getenv("DLLM_TRT_ATTENTION_PLAN");
    if (env == nullptr || std::sscanf(env, "%d:%d:%d:%d", &p.kernel, &p.nw, &p.bn, &p.splits) != 4) return nullptr;
    if (p.kernel == kWmma) p.bn = kKT;
    return p.kernel >= kWmma && p.kernel <= kSplitCounters && p.splits >= 1 ? &p : nullptr;
  }();
  return plan;
}

int split_cluster_capacity(int D, int splits);  // below, with the kernels' launchers

Plan plan_for(int B, int L, int keys, int H, int D) {
  Plan p{kWmma, 0, kKT, 1, 1};
  const long sms = sm_count();
  if (const Plan* o = plan_override(); o != nullptr && D <= 128 && (o->kernel < kSplit || L <= 64)) {
    p = *o;
    const int tile = p.kernel >= kSplit ? kSplitTile : p.bn;
    const int tiles = (keys + tile - 1) / tile;
    p.split_tiles = (tiles + o->splits - 1) / o->splits;
    p.splits = (tiles + p.split_tiles - 1) / p.split_tiles;
    return p;
  }
  if (D <= 128 && L <= 64) {  // block steps: the split kernel (presents fused, splits merged in the kernel)
    p.kernel = kSplit;
    p.nw = 8;
    p.bn = split_smem(D, 8, 128) <= smem_limit() ? 128 : 64;  // 158 KB at D = 128; 90 KB with 64 (RTX GPUs)
    const long tiles = (keys + kSplitTile - 1) / kSplitTile;
    long splits = std::min(std::max(1L, sms / ((long)H * B)), std::min<long>(kSplitMaxSplits, tiles));
    // a cluster per head merges its splits (sm_90) when every cluster fits in one wave: the most splits (<= 8)
    // that do (LLaDA-8B on an H200: 3, 10.2 us; 4 splits need a second wave of clusters, 17.8; the last-CTA
    // merge with 4 splits, 11.6); else the last CTA merges
    p.kernel = kSplitCounters;
    if (p.bn == 128 && splits > 1) {
      for (long c = std::min(splits, 8L); c >= 2; --c)
        if (split_cluster_capacity(D, (int)c) >= (long)H * B) {
          splits = c;
          p.kernel = kSplit;
          break;
        }
    }
    p.split_tiles = (int)((tiles + splits - 1) / splits);
    p.splits = (int)((tiles + p.split_tiles - 1) / p.split_tiles);
  } else if (D <= 128 && L <= 64) {  // (the warps kernel: $DLLM_TRT_ATTENTION_PLAN=2:...)
    p.kernel = kWarps;
    p.nw = warps_smem(D, 8, 16) <= smem_limit() ? 8 : 4;  // 141 KB at D = 128: 4 warps (73 KB) on RTX GPUs
    p.bn = 16;
    const long qtiles = (L + 15) / 16, tiles = (keys + p.bn - 1) / p.bn;
    split_keys(p, qtiles * H * B, tiles, sms / 3, p.nw);  // one CTA per SM (its tiles fill shared memory)
  } else if (D <= 128) {
    p.kernel = kFlash;
    p.nw = L > 32 ? 4 : (L > 16 ? 2 : 1);
    p.bn = p.nw == 4 && flash_smem(D, 4, 64) <= smem_limit() ? 64 : 32;
    // 5 warps (80 rows) when that puts every CTA in one wave and 4 would not: LLaDA-8B's prefill 320 and prefix
    // step 288 (128 CTAs instead of 160 on 132 SMs; 24.8 against 26.4 us on an H200)
    if (p.bn == 64 && (L + 79) / 80 * (long)H * B <= sms && (L + 63) / 64 * (long)H * B > sms &&
        flash_smem(D, 5, 64) <= smem_limit())
      p.nw = 5;
    const long qtiles = (L + 16 * p.nw - 1) / (16 * p.nw), tiles = (keys + p.bn - 1) / p.bn;
    split_keys(p, qtiles * H * B, tiles, sms / 2, 2);  // 128 CTAs on 132 SMs: no split (a split doubled it)
  } else {
    const int warps = wmma_warps(D);
    const long qtiles = (L + kQT - 1) / kQT, tiles = (keys + kKT - 1) / kKT;
    split_keys(p, qtiles * H * B, tiles, 2 * sms, warps);
  }
  return p;
}

int64_t workspace_of(const Plan& p, int B, int L, int H, int D) {
  return p.splits > 1 ? (int64_t)B * H * p.splits * L * (D + 2) : 0;
}

// floats of workspace [B, H, splits, L, D + 2] the attention uses for these shapes (0: one split)
int64_t workspace_floats(int B, int L, int C, int H, int D) {
  return workspace_of(plan_for(B, L, C + L, H, D), B, L, H, D);
}

struct Args {
  const bf16* qkv;
  const float *cos_t, *sin_t;
  const bf16 *bias, *past_k, *past_v;
  const int64_t* pos;
  bf16 *out, *present_k, *present_v;
  int B, L, C, H, Hkv, D, P;
  float scale;
};

cudaError_t combine(const Args& a, cudaStream_t stream, const float* ws, int splits) {
  combine_kernel<<<dim3((unsigned)(a.B * a.L), (unsigned)a.H), (unsigned)(a.D < 256 ? a.D : 256), 0, stream>>>(
      ws, a.out, a.L, a.H, a.D, splits);
  return cudaGetLastError();
}

// Opt `Kernel` in to `bytes` of dynamic shared memory (past the 48 KB default), once per process: the attribute
// belongs to the function and a launch is on the hot path. Every instantiation keeps its own flag and result.
template <auto Kernel>
cudaError_t smem_opt_in(size_t bytes) {
  static std::once_flag once;
  static cudaError_t attr = cudaSuccess;
  std::call_once(once, [bytes] {
    attr = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  });
  return attr;
}

template <int D>
cudaError_t wmma_attention(const Args& a, cudaStream_t stream, float* ws, const Plan& plan) {
  if (const cudaError_t e = smem_opt_in<attention_kernel<D>>(Smem<D>::total); e != cudaSuccess) return e;
  const dim3 grid((unsigned)((a.L + kQT - 1) / kQT), (unsigned)(a.H * plan.splits), (unsigned)a.B);
  attention_kernel<D><<<grid, warps_for<D>() * 32, Smem<D>::total, stream>>>(
      a.qkv, a.pos, a.cos_t, a.sin_t, a.bias, a.past_k, a.past_v, a.present_k, a.present_v, a.out, ws, a.L, a.C, a.H,
      a.Hkv, a.P, a.scale, plan.splits, plan.split_tiles);
  cudaError_t e = cudaGetLastError();
  return (e != cudaSuccess || plan.splits == 1) ? e : combine(a, stream, ws, plan.splits);
}

template <int D, int NW, int BN>
cudaError_t flash_attention(const Args& a, cudaStream_t stream, float* ws, const Plan& plan) {
  using S = FlashSmem<D, NW, BN>;
  if (const cudaError_t e = smem_opt_in<flash_kernel<D, NW, BN>>(S::bytes); e != cudaSuccess) return e;
  const dim3 grid((unsigned)((a.L + 16 * NW - 1) / (16 * NW)), (unsigned)(a.H * plan.splits), (unsigned)a.B);
  flash_kernel<D, NW, BN><<<grid, NW * 32, S::bytes, stream>>>(
      a.qkv, a.pos, a.cos_t, a.sin_t, a.bias, a.past_k, a.past_v, a.present_k, a.present_v, a.out, ws, a.L, a.C, a.H,
      a.Hkv, a.P, a.scale, plan.splits, plan.split_tiles);
  cudaError_t e = cudaGetLastError();
  return (e != cudaSuccess || plan.splits == 1) ? e : combine(a, stream, ws, plan.splits);
}

template <int D, int NW, int BN>
cudaError_t warps_attention(const Args& a, cudaStream_t stream, float* ws, const Plan& plan) {
  using S = WarpsSmem<D, NW, BN>;
  if (const cudaError_t e = smem_opt_in<flash_warps_kernel<D, NW, BN>>(S::bytes); e != cudaSuccess) return e;
  const dim3 grid((unsigned)((a.L + 15) / 16), (unsigned)(a.H * plan.splits), (unsigned)a.B);
  flash_warps_kernel<D, NW, BN><<<grid, NW * 32, S::bytes, stream>>>(
      a.qkv, a.pos, a.cos_t, a.sin_t, a.bias, a.past_k, a.past_v, a.present_k, a.present_v, a.out, ws, a.L, a.C, a.H,
      a.Hkv, a.P, a.scale, plan.splits, plan.split_tiles);
  cudaError_t e = cudaGetLastError();
  return (e != cudaSuccess || plan.splits == 1) ? e : combine(a, stream, ws, plan.splits);
}

// Whether `kernel` was compiled for sm_90 or newer (a library built for an older GPU and JIT-compiled here has the
// cluster code compiled out) and this GPU launches thread block clusters.
template <typename K>
bool clusters_run(K kernel) {
  static const bool gpu = [] {
    int dev = 0, cc = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev);
    return cc >= 9 && std::getenv("DLLM_TRT_NO_CLUSTERS") == nullptr;  // $DLLM_TRT_NO_CLUSTERS: the counter path
  }();
  if (!gpu) return false;
  cudaFuncAttributes fa{};
  return cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90 && fa.ptxVersion >= 90;
}

// How many clusters of `splits` CTAs of flash_split_kernel<D, 8, 128> this GPU holds at once (0: no clusters here)
template <int D>
int cluster_capacity_of(int splits) {
  using S = SplitSmem<D, 8, 128>;
  auto kernel = flash_split_kernel<D, 8, 128, true>;
  if (!clusters_run(kernel)) return 0;
  if (smem_opt_in<flash_split_kernel<D, 8, 128, true>>(S::bytes) != cudaSuccess) return 0;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)splits, 1, 1);
  cfg.blockDim = dim3(8 * 32);
  cfg.dynamicSmemBytes = S::bytes;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = (unsigned)splits;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  return cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) == cudaSuccess ? n : 0;
}

int split_cluster_capacity(int D, int splits) {
  static std::mutex mu;
  static int known[3][9] = {};  // D 32 / 64 / 128 x splits 0..8: capacity + 1 (0: not asked yet)
  const int di = D == 32 ? 0 : (D == 64 ? 1 : (D == 128 ? 2 : -1));
  if (di < 0 || splits < 2 || splits > 8) return 0;
  std::lock_guard<std::mutex> lock(mu);
  if (known[di][splits] == 0) {
    const int n = D == 32 ? cluster_capacity_of<32>(splits)
                          : (D == 64 ? cluster_capacity_of<64>(splits) : cluster_capacity_of<128>(splits));
    cudaGetLastError();  // a refused query is "no clusters", not the next launch's error
    known[di][splits] = n + 1;
  }
  return known[di][splits] - 1;
}

template <int D, int NW, int RK>
cudaError_t split_attention(const Args& a, cudaStream_t stream, float* ws, const Plan& plan) {
  using S = SplitSmem<D, NW, RK>;
  if (const cudaError_t e = smem_opt_in<flash_split_kernel<D, NW, RK>>(S::bytes); e != cudaSuccess) return e;
  if ((a.L + 15) / 16 > NW || plan.splits > kSplitMaxSplits) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)plan.splits, (unsigned)a.H, (unsigned)a.B);
  if constexpr (S::cluster_fits) {
    static const bool clusters = clusters_run(flash_split_kernel<D, NW, RK, true>);  // once: a launch is hot
    if (plan.kernel == kSplit && plan.splits > 1 && plan.splits <= 8 && clusters) {
      if (const cudaError_t e = smem_opt_in<flash_split_kernel<D, NW, RK, true>>(S::bytes); e != cudaSuccess) return e;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = grid;
      cfg.blockDim = dim3(NW * 32);
      cfg.dynamicSmemBytes = S::bytes;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = (unsigned)plan.splits;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      return cudaLaunchKernelEx(&cfg, flash_split_kernel<D, NW, RK, true>, a.qkv, a.pos, a.cos_t, a.sin_t, a.bias,
                                a.past_k, a.past_v, a.present_k, a.present_v, a.out, ws, (unsigned*)nullptr, a.L, a.C,
                                a.H, a.Hkv, a.P, a.scale, plan.splits, plan.split_tiles * kSplitTile);
    }
  }
  unsigned* counters = plan.splits > 1 ? split_counters(stream, (long)a.B * a.H) : nullptr;
  flash_split_kernel<D, NW, RK><<<grid, NW * 32, S::bytes, stream>>>(
      a.qkv, a.pos, a.cos_t, a.sin_t, a.bias, a.past_k, a.past_v, a.present_k, a.present_v, a.out, ws, counters, a.L,
      a.C, a.H, a.Hkv, a.P, a.scale, plan.splits, plan.split_tiles * kSplitTile);
  cudaError_t e = cudaGetLastError();
  return (e != cudaSuccess || plan.splits == 1 || counters != nullptr) ? e : combine(a, stream, ws, plan.splits);
}

template <int D>
cudaError_t split_kernel_for(const Args& a, cudaStream_t stream, float* ws, const Plan& p) {
  if (p.nw == 8 && p.bn == 128) return split_attention<D, 8, 128>(a, stream, ws, p);
  if (p.nw == 8 && p.bn == 64) return split_attention<D, 8, 64>(a, stream, ws, p);
  if (p.nw == 4 && p.bn == 128) return split_attention<D, 4, 128>(a, stream, ws, p);
  if (p.nw == 4 && p.bn == 64) return split_attention<D, 4, 64>(a, stream, ws, p);
  return cudaErrorInvalidValue;
}

template <int D>
cudaError_t warps_kernel_for(const Args& a, cudaStream_t stream, float* ws, const Plan& p) {
  if (p.nw == 4 && p.bn == 32) return warps_attention<D, 4, 32>(a, stream, ws, p);
  if (p.nw == 4 && p.bn == 16) return warps_attention<D, 4, 16>(a, stream, ws, p);
  if (p.nw == 8 && p.bn == 16) return warps_attention<D, 8, 16>(a, stream, ws, p);
  if (p.nw == 2 && p.bn == 32) return warps_attention<D, 2, 32>(a, stream, ws, p);
  return cudaErrorInvalidValue;
}

template <int D>
cudaError_t flash_for(const Args& a, cudaStream_t stream, float* ws, const Plan& p) {
  if (p.nw == 4 && p.bn == 64) return flash_attention<D, 4, 64>(a, stream, ws, p);
  if (p.nw == 5 && p.bn == 64) return flash_attention<D, 5, 64>(a, stream, ws, p);
  if (p.nw == 8 && p.bn == 64) return flash_attention<D, 8, 64>(a, stream, ws, p);
  if (p.nw == 4 && p.bn == 32) return flash_attention<D, 4, 32>(a, stream, ws, p);
  if (p.nw == 2 && p.bn == 64) return flash_attention<D, 2, 64>(a, stream, ws, p);
  if (p.nw == 2 && p.bn == 32) return flash_attention<D, 2, 32>(a, stream, ws, p);
  if (p.nw == 1 && p.bn == 32) return flash_attention<D, 1, 32>(a, stream, ws, p);
  if (p.nw == 1 && p.bn == 64) return flash_attention<D, 1, 64>(a, stream, ws, p);
  return cudaErrorInvalidValue;
}

// presents, then the attention by `plan` (its workspace: workspace_of(plan) floats at ws)
cudaError_t run_planned(const Args& a, cudaStream_t stream, float* ws, const Plan& plan) {
  if (plan.kernel == kSplit || plan.kernel == kSplitCounters) {  // presents fused
    switch (a.D) {
      case 32: return split_kernel_for<32>(a, stream, ws, plan);
      case 64: return split_kernel_for<64>(a, stream, ws, plan);
      case 128: return split_kernel_for<128>(a, stream, ws, plan);
      default: return cudaErrorInvalidValue;
    }
  }
  if (plan.kernel == kWarps) {  // presents fused
    switch (a.D) {
      case 32: return warps_kernel_for<32>(a, stream, ws, plan);
      case 64: return warps_kernel_for<64>(a, stream, ws, plan);
      case 128: return warps_kernel_for<128>(a, stream, ws, plan);
      default: return cudaErrorInvalidValue;
    }
  }
  const int64_t chunks = (int64_t)a.B * a.L * a.Hkv * (a.D / 16);
  presents_kernel<<<(unsigned)((chunks + 255) / 256), 256, 0, stream>>>(
      a.qkv, a.pos, a.cos_t, a.sin_t, a.present_k, a.present_v, a.L, a.H, a.Hkv, a.D, a.P, chunks);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (plan.kernel == kFlash) {
    switch (a.D) {
      case 32: return flash_for<32>(a, stream, ws, plan);
      case 64: return flash_for<64>(a, stream, ws, plan);
      case 128: return flash_for<128>(a, stream, ws, plan);
      default: return cudaErrorInvalidValue;
    }
  }
  switch (a.D) {
    case 32: return wmma_attention<32>(a, stream, ws, plan);
    case 64: return wmma_attention<64>(a, stream, ws, plan);
    case 128: return wmma_attention<128>(a, stream, ws, plan);
    case 256: return wmma_attention<256>(a, stream, ws, plan);
    default: return cudaErrorInvalidValue;
  }
}

// the default plan; in one pass per (query tile, head) when ``ws`` cannot hold its workspace
cudaError_t run_cache_attention(const Args& a, cudaStream_t stream, float* ws, int64_t ws_floats) {
  Plan plan = plan_for(a.B, a.L, a.C + a.L, a.H, a.D);
  if (ws == nullptr || ws_floats < workspace_of(plan, a.B, a.L, a.H, a.D)) {
    plan.splits = 1;
    const int tile = plan.kernel >= kSplit ? kSplitTile : plan.bn;
    plan.split_tiles = (a.C + a.L + tile - 1) / tile;
  }
  return run_planned(a, stream, ws, plan);
}

// ---------------------------------------------------------------------------------------------------------------
// SelectRows: per row of fp32 logits [N, V], the top-1 token (the mask token excluded, ties to the lowest id) and
// the softmax statistics the unmasking rules rank by, without a softmax tensor: confidence p1 = 1 / sum exp(z - z1),
// margin p1 - p2, neg_entropy = sum p log p. models.layers.select_rows is the reference (ORT runs it as ~16
// kernels over the vocabulary; this is one). One CTA per row: a pass for the top two, a pass for the sums.
constexpr int kSelThreads = 1024;

struct Top2 {
  float v1, v2;
  int i1, i2;
};

__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

__device__ __forceinline__ void top2_push(Top2& t, float v, int i) {
  if (ranks_before(v, i, t.v1, t.i1)) {
    t.v2 = t.v1; t.i2 = t.i1; t.v1 = v; t.i1 = i;
  } else if (ranks_before(v, i, t.v2, t.i2)) {
    t.v2 = v; t.i2 = i;
  }
}

__device__ __forceinline__ Top2 top2_merge(const Top2& a, const Top2& b) {
  Top2 r;
  if (ranks_before(a.v1, a.i1, b.v1, b.i1)) {
    r.v1 = a.v1; r.i1 = a.i1;
    if (ranks_before(a.v2, a.i2, b.v1, b.i1)) { r.v2 = a.v2; r.i2 = a.i2; } else { r.v2 = b.v1; r.i2 = b.i1; }
  } else {
    r.v1 = b.v1; r.i1 = b.i1;
    if (ranks_before(a.v1, a.i1, b.v2, b.i2)) { r.v2 = a.v1; r.i2 = a.i1; } else { r.v2 = b.v2; r.i2 = b.i2; }
  }
  return r;
}

__global__ void __launch_bounds__(kSelThreads) select_rows_kernel(
    const float* __restrict__ logits, int64_t* __restrict__ tokens, float* __restrict__ confidence,
    float* __restrict__ margin, float* __restrict__ neg_entropy, int V, int mask) {
  __shared__ Top2 tops[kSelThreads / 32];
  __shared__ float sums[2][kSelThreads / 32];
  const int64_t row = blockIdx.x;
  const float* z = logits + row * (int64_t)V;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Top2 t{-INFINITY, -INFINITY, INT_MAX, INT_MAX};
  // 16-byte loads, four in flight per thread (one row is one CTA's: latency, not bandwidth, bounds a pass)
  const bool vec = (V % 4) == 0;
  const int V4 = vec ? V / 4 : 0;
  const float4* z4 = reinterpret_cast<const float4*>(z);
#pragma unroll 2
  for (int i = threadIdx.x; i < V4; i += kSelThreads) {
    const float4 x = z4[i];
    const int j = 4 * i;
    top2_push(t, j == mask ? -INFINITY : x.x, j);
    top2_push(t, j + 1 == mask ? -INFINITY : x.y, j + 1);
    top2_push(t, j + 2 == mask ? -INFINITY : x.z, j + 2);
    top2_push(t, j + 3 == mask ? -INFINITY : x.w, j + 3);
  }
  for (int i = 4 * V4 + threadIdx.x; i < V; i += kSelThreads) top2_push(t, i == mask ? -INFINITY : z[i], i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Top2 u;
    u.v1 = __shfl_xor_sync(0xffffffffu, t.v1, o);
    u.i1 = __shfl_xor_sync(0xffffffffu, t.i1, o);
    u.v2 = __shfl_xor_sync(0xffffffffu, t.v2, o);
    u.i2 = __shfl_xor_sync(0xffffffffu, t.i2, o);
    t = top2_merge(t, u);
  }
  if (lane == 0) tops[warp] = t;
  __syncthreads();
  if (warp == 0) {
    t = lane < kSelThreads / 32 ? tops[lane] : Top2{-INFINITY, -INFINITY, INT_MAX, INT_MAX};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      Top2 u;
      u.v1 = __shfl_xor_sync(0xffffffffu, t.v1, o);
      u.i1 = __shfl_xor_sync(0xffffffffu, t.i1, o);
      u.v2 = __shfl_xor_sync(0xffffffffu, t.v2, o);
      u.i2 = __shfl_xor_sync(0xffffffffu, t.i2, o);
      t = top2_merge(t, u);
    }
    if (lane == 0) tops[0] = t;
  }
  __syncthreads();
  t = tops[0];
  const float top = t.v1;
  float se = 0.f, sed = 0.f;  // sum exp(d), sum exp(d) * max(d, -1e4); d = z - top (the mask: exp(-inf) = 0)
#pragma unroll 4
  for (int i = threadIdx.x; i < V4; i += kSelThreads) {
    const float4 x = z4[i];
    const int j = 4 * i;
    const float d0 = j == mask ? -INFINITY : x.x - top, d1 = j + 1 == mask ? -INFINITY : x.y - top;
    const float d2 = j + 2 == mask ? -INFINITY : x.z - top, d3 = j + 3 == mask ? -INFINITY : x.w - top;
    const float e0 = expf(d0), e1 = expf(d1), e2 = expf(d2), e3 = expf(d3);  // 0 at the mask
    se += (e0 + e1) + (e2 + e3);
    sed += (e0 * fmaxf(d0, -1e4f) + e1 * fmaxf(d1, -1e4f)) + (e2 * fmaxf(d2, -1e4f) + e3 * fmaxf(d3, -1e4f));
  }
  for (int i = 4 * V4 + threadIdx.x; i < V; i += kSelThreads) {
    if (i == mask) continue;
    const float d = z[i] - top;
    const float e = expf(d);
    se += e;
    sed += e * fmaxf(d, -1e4f);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    se += __shfl_xor_sync(0xffffffffu, se, o);
    sed += __shfl_xor_sync(0xffffffffu, sed, o);
  }
  if (lane == 0) {
    sums[0][warp] = se;
    sums[1][warp] = sed;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f, ed = 0.f;
    for (int w = 0; w < kSelThreads / 32; ++w) {
      total += sums[0][w];
      ed += sums[1][w];
    }
    const float p1 = 1.f / total;
    const float p2 = t.i2 == INT_MAX ? 0.f : expf(t.v2 - top) / total;
    tokens[row] = t.i1 == INT_MAX ? 0 : t.i1;
    confidence[row] = p1;
    margin[row] = p1 - p2;
    neg_entropy[row] = ed / total - logf(total);
  }
}

cudaError_t run_select_rows(const float* logits, int64_t* tokens, float* confidence, float* margin,
                            float* neg_entropy, int64_t rows, int V, int mask, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  select_rows_kernel<<<(unsigned)rows, kSelThreads, 0, stream>>>(logits, tokens, confidence, margin, neg_entropy, V,
                                                                  mask);
  return cudaGetLastError();
}

OrtStatusPtr fail(const std::string& msg) { return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

OrtStatusPtr cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return nullptr;
  std::string msg = std::string("dllm_trt.cuda ") + what + ": " + cudaGetErrorString(e);
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction)
    msg += " (libdllm_ort_cuda.so was built for another GPU architecture: rebuild it on this machine with "
           "python -m dllm_trt.plugins.ort_cuda_build, or pass --arch sm_XY of this GPU)";
  return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, msg.c_str());
}

struct CacheAttentionKernel {
  int64_t heads = 0, kv_heads = 0;
  float scale = 1.f;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto qkv = ctx.GetInput(0), pos = ctx.GetInput(1), cos_t = ctx.GetInput(2), sin_t = ctx.GetInput(3);
      auto bias = ctx.GetInput(4), pk = ctx.GetInput(5), pv = ctx.GetInput(6);
      const auto qs = qkv.GetTensorTypeAndShapeInfo().GetShape();
      const auto ps = pk.GetTensorTypeAndShapeInfo().GetShape();
      const auto bs = bias.GetTensorTypeAndShapeInfo().GetShape();
      const auto cs = cos_t.GetTensorTypeAndShapeInfo().GetShape();
      if (qs.size() != 3 || ps.size() != 4 || bs.size() != 4 || cs.size() != 2)
        return fail("CacheAttention: qkv [B, L, (H + 2 Hkv) D], past [B, Hkv, C, D], bias [B, 1, L, C + L], "
                    "cos/sin [P, D/2] expected");
      const int64_t B = qs[0], L = qs[1], Hkv = ps[1], C = ps[2], D = ps[3], P = cs[0];
      if (Hkv != kv_heads || heads % kv_heads || qs[2] != (heads + 2 * kv_heads) * D || cs[1] * 2 != D ||
          bs[0] != B || bs[2] != L || bs[3] != C + L || ps[0] != B)
        return fail("CacheAttention: inconsistent shapes (qkv " + std::to_string(qs[2]) + ", past heads " +
                    std::to_string(Hkv) + " x " + std::to_string(D) + ", bias keys " + std::to_string(bs[3]) + ")");
      if (D != 32 && D != 64 && D != 128 && D != 256)
        return fail("CacheAttention: head dim " + std::to_string(D) + " is not one of 32, 64, 128, 256");
      const std::vector<int64_t> out_shape{B, L, heads * D}, present_shape{B, Hkv, L, D};
      auto out = ctx.GetOutput(0, out_shape);
      auto ck = ctx.GetOutput(1, present_shape);
      auto cv = ctx.GetOutput(2, present_shape);
      if (B == 0 || L == 0) return nullptr;
      // the workspace of the split keys: a 4th output nobody reads (allocated by ONNX Runtime's plan, so the same
      // buffer in every replay of a CUDA graph); graphs without it run one pass per (query tile, head)
      float* ws = nullptr;
      int64_t ws_floats = 0;
      if (ctx.GetOutputCount() > 3) {
        ws_floats = workspace_floats((int)B, (int)L, (int)C, (int)heads, (int)D);
        auto w = ctx.GetOutput(3, std::vector<int64_t>{ws_floats > 0 ? ws_floats : 1});
        ws = static_cast<float*>(w.GetTensorMutableRawData());
      }
      if (const size_t need = smem_of(plan_for((int)B, (int)L, (int)(C + L), (int)heads, (int)D), (int)D);
          need > smem_limit())
        return fail("CacheAttention: head dim " + std::to_string(D) + " needs " + std::to_string(need / 1024) +
                    " KB of shared memory per block and this GPU allows " + std::to_string(smem_limit() / 1024) +
                    " KB: export this model with --ops ort (ONNX Runtime's own attention) for this GPU");
      Args a{static_cast<const bf16*>(qkv.GetTensorRawData()), static_cast<const float*>(cos_t.GetTensorRawData()),
             static_cast<const float*>(sin_t.GetTensorRawData()), static_cast<const bf16*>(bias.GetTensorRawData()),
             static_cast<const bf16*>(pk.GetTensorRawData()), static_cast<const bf16*>(pv.GetTensorRawData()),
             static_cast<const int64_t*>(pos.GetTensorRawData()), static_cast<bf16*>(out.GetTensorMutableRawData()),
             static_cast<bf16*>(ck.GetTensorMutableRawData()), static_cast<bf16*>(cv.GetTensorMutableRawData()),
             (int)B, (int)L, (int)C, (int)heads, (int)Hkv, (int)D, (int)P, scale};
      return cuda_status(run_cache_attention(a, reinterpret_cast<cudaStream_t>(ctx.GetGPUComputeStream()), ws,
                                             ws_floats), "CacheAttention kernels");
    } catch (const Ort::Exception& ex) {
      return fail(ex.what());
    }
  }
};

struct CacheAttentionOp : Ort::CustomOpBase<CacheAttentionOp, CacheAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      auto* k = new CacheAttentionKernel;
      k->heads = ki.GetAttribute<int64_t>("num_heads");
      k->kv_heads = ki.GetAttribute<int64_t>("kv_num_heads");
      k->scale = ki.GetAttribute<float>("scale");
      *kernel = k;
      return nullptr;
    } catch (const Ort::Exception& ex) {
      return fail(std::string("CacheAttention attributes: ") + ex.what());
    }
  }
  const char* GetName() const { return "CacheAttention"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                  : (i == 2 || i == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16);
  }
  size_t GetOutputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return i == 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
};

struct SiluMulKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto x = ctx.GetInput(0);
      auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.empty() || shape.back() % 2) return fail("SiluMul: the last dimension must be 2 x intermediate size");
      const int64_t I = shape.back() / 2;
      int64_t rows = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
      shape.back() = I;
      auto y = ctx.GetOutput(0, shape);
      if (rows == 0 || I == 0) return nullptr;
      auto stream = reinterpret_cast<cudaStream_t>(ctx.GetGPUComputeStream());
      const int64_t work = I % 8 == 0 ? rows * (I / 8) : rows * I;
      silu_mul_kernel<<<(unsigned)((work + 255) / 256), 256, 0, stream>>>(
          static_cast<const bf16*>(x.GetTensorRawData()), static_cast<bf16*>(y.GetTensorMutableRawData()), rows, (int)I);
      return cuda_status(cudaGetLastError(), "silu_mul kernel");
    } catch (const Ort::Exception& ex) {
      return fail(ex.what());
    }
  }
};

struct SiluMulOp : Ort::CustomOpBase<SiluMulOp, SiluMulKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo*, void** kernel) const {
    *kernel = new SiluMulKernel;
    return nullptr;
  }
  const char* GetName() const { return "SiluMul"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16; }
};

struct SelectRowsKernel {
  int64_t mask_token_id = -1;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto x = ctx.GetInput(0);
      auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.empty() || shape.back() <= 0 || shape.back() > INT_MAX)
        return fail("SelectRows: logits [..., V] with 0 < V < 2^31 expected");
      const int64_t V = shape.back();
      int64_t rows = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
      shape.pop_back();
      auto tok = ctx.GetOutput(0, shape);
      auto conf = ctx.GetOutput(1, shape);
      auto marg = ctx.GetOutput(2, shape);
      auto ent = ctx.GetOutput(3, shape);
      const int mask = (mask_token_id >= 0 && mask_token_id < V) ? (int)mask_token_id : -1;
      return cuda_status(run_select_rows(static_cast<const float*>(x.GetTensorRawData()),
                                         static_cast<int64_t*>(tok.GetTensorMutableRawData()),
                                         static_cast<float*>(conf.GetTensorMutableRawData()),
                                         static_cast<float*>(marg.GetTensorMutableRawData()),
                                         static_cast<float*>(ent.GetTensorMutableRawData()), rows, (int)V, mask,
                                         reinterpret_cast<cudaStream_t>(ctx.GetGPUComputeStream())),
                         "select_rows kernel");
    } catch (const Ort::Exception& ex) {
      return fail(ex.what());
    }
  }
};

struct SelectRowsOp : Ort::CustomOpBase<SelectRowsOp, SelectRowsKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      auto* k = new SelectRowsKernel;
      k->mask_token_id = ki.GetAttribute<int64_t>("mask_token_id");
      *kernel = k;
      return nullptr;
    } catch (const Ort::Exception& ex) {
      return fail(std::string("SelectRows attributes: ") + ex.what());
    }
  }
  const char* GetName() const { return "SelectRows"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

const CacheAttentionOp kCacheAttention;
const SiluMulOp kSiluMul;
const SelectRowsOp kSelectRows;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // this ONNX Runtime is older than the headers: report it with the oldest API
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest == nullptr ? nullptr
                             : oldest->CreateStatus(ORT_FAIL, ("libdllm_ort_cuda.so was built with ONNX Runtime headers "
                                                               "of C API version " + std::to_string(ORT_API_VERSION) +
                                                               ", newer than this ONNX Runtime: rebuild it with this "
                                                               "version's headers (--ort-include)").c_str());
  }
  Ort::InitApi(api);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain("dllm_trt.cuda", &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &kCacheAttention)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &kSiluMul)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &kSelectRows)) return st;
  return api->AddCustomOpDomain(options, domain);  // the domain lives as long as the process
}

#ifdef DLLM_TRT_PHASES
extern "C" __attribute__((visibility("default"))) int dllm_phases(unsigned long long* host, int ctas) {
  return (int)cudaMemcpyFromSymbol(host, g_phases, sizeof(unsigned long long) * 8 * std::min(ctas, 4096));
}
#endif

// C entry points for tests without ONNX Runtime (ctypes on device pointers): the same kernels
extern "C" __attribute__((visibility("default"))) int64_t dllm_cache_attention_workspace(int B, int L, int C, int H,
                                                                                         int D) {
  return workspace_floats(B, L, C, H, D);
}

extern "C" __attribute__((visibility("default"))) int dllm_cache_attention(
    const void* qkv, const int64_t* pos, const void* cos_t, const void* sin_t, const void* bias, const void* past_k,
    const void* past_v, void* out, void* present_k, void* present_v, void* workspace, int64_t workspace_floats_,
    int B, int L, int C, int H, int Hkv, int D, int P, float scale, void* stream) {
  Args a{static_cast<const bf16*>(qkv), static_cast<const float*>(cos_t), static_cast<const float*>(sin_t),
         static_cast<const bf16*>(bias), static_cast<const bf16*>(past_k), static_cast<const bf16*>(past_v), pos,
         static_cast<bf16*>(out), static_cast<bf16*>(present_k), static_cast<bf16*>(present_v), B, L, C, H, Hkv, D, P,
         scale};
  return (int)run_cache_attention(a, reinterpret_cast<cudaStream_t>(stream), static_cast<float*>(workspace),
                                  workspace_floats_);
}

// One kernel configuration, for benchmarks/cache_attention.py's sweep: kernel 0 (WMMA; nw, bn ignored), 1 (flash,
// nw warps of 16 query rows, bn keys per tile: 8/64, 5/64, 4/64, 2/64, 2/32, 1/32, 1/64), 2 (warps: nw/bn 8/16,
// 4/16, 4/32, 2/32), 3 (split, L <= 64: nw warps 8 or 4, bn keys per round 128 or 64, splits <= 16; merged in a
// thread block cluster on sm_90 when splits <= 8 and bn = 128) or 4 (split, merged by the last CTA), the keys
// split over `splits` CTAs (workspace: B * H * splits * L * (D + 2) floats when splits > 1). Returns a cudaError_t
// (1: no such config).
extern "C" __attribute__((visibility("default"))) int dllm_cache_attention_config(
    const void* qkv, const int64_t* pos, const void* cos_t, const void* sin_t, const void* bias, const void* past_k,
    const void* past_v, void* out, void* present_k, void* present_v, void* workspace, int B, int L, int C, int H,
    int Hkv, int D, int P, float scale, int kernel, int nw, int bn, int splits, void* stream) {
  Args a{static_cast<const bf16*>(qkv), static_cast<const float*>(cos_t), static_cast<const float*>(sin_t),
         static_cast<const bf16*>(bias), static_cast<const bf16*>(past_k), static_cast<const bf16*>(past_v), pos,
         static_cast<bf16*>(out), static_cast<bf16*>(present_k), static_cast<bf16*>(present_v), B, L, C, H, Hkv, D, P,
         scale};
  Plan p{kernel, nw, kernel == kWmma ? kKT : bn, 1, 1};
  if (kernel < kWmma || kernel > kSplitCounters || (kernel != kWmma && D > 128) || splits < 1) return 1;
  if (kernel >= kSplit && (L > 64 || splits > kSplitMaxSplits)) return 1;
  const int tile = kernel >= kSplit ? kSplitTile : p.bn;
  const int tiles = (C + L + tile - 1) / tile;
  p.split_tiles = (tiles + splits - 1) / splits;
  p.splits = (tiles + p.split_tiles - 1) / p.split_tiles;
  if (p.splits > 1 && workspace == nullptr) return 1;
  return (int)run_planned(a, reinterpret_cast<cudaStream_t>(stream), static_cast<float*>(workspace), p);
}

// The default plan for these shapes: (kernel, nw, bn, splits), for the benchmark's table
extern "C" __attribute__((visibility("default"))) void dllm_cache_attention_plan(int B, int L, int C, int H, int D,
                                                                               int* out4) {
  const Plan p = plan_for(B, L, C + L, H, D);
  out4[0] = p.kernel;
  out4[1] = p.nw;
  out4[2] = p.bn;
  out4[3] = p.splits;
}

extern "C" __attribute__((visibility("default"))) int dllm_select_rows(const void* logits, int64_t* tokens,
                                                                      float* confidence, float* margin,
                                                                      float* neg_entropy, int64_t rows, int V,
                                                                      int mask, void* stream) {
  return (int)run_select_rows(static_cast<const float*>(logits), tokens, confidence, margin, neg_entropy, rows, V,
                              mask < V ? mask : -1, reinterpret_cast<cudaStream_t>(stream));
}
