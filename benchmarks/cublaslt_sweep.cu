// cuBLASLt algorithm sweep for LLaDA-8B's GEMM shapes (bf16 in/out, fp32 accumulate), row-major x [M, K] times W:
// for each shape the heuristic's first choice (what cuBLAS runs) and the best of every algorithm it returns (up to
// 64), timed over rotating weight copies (not L2-resident). Is there a faster library GEMM for the block step?
//
//   nvcc -O2 -arch=sm_90 -o cublaslt_sweep benchmarks/cublaslt_sweep.cu -lcublasLt && ./cublaslt_sweep
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <vector>
#include <algorithm>
#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { printf("err %d at %s:%d\n", (int)e_, __FILE__, __LINE__); return 1; } } while (0)

int main() {
  cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  struct Shape { const char* name; int K, N; };
  std::vector<Shape> shapes = {{"qkv", 4096, 12288}, {"o", 4096, 4096}, {"gate_up", 4096, 24576}, {"down", 12288, 4096}, {"lm_head", 4096, 126464}};
  size_t wsz = 64 << 20; void* work; CK(cudaMalloc(&work, wsz));
  cudaStream_t st; CK(cudaStreamCreate(&st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  for (int M : {32, 320}) for (auto& s : shapes) for (int transW : {0, 1}) {
    if (M == 320 && s.N > 30000) continue;
    const int K = s.K, N = s.N;
    const int nbuf = (size_t)K * N * 2 > (100u << 20) ? 2 : 4;
    std::vector<void*> W(nbuf); for (auto& w : W) { CK(cudaMalloc(&w, (size_t)K * N * 2)); cudaMemset(w, 0, (size_t)K * N * 2); }
    void *X, *Y; CK(cudaMalloc(&X, (size_t)M * K * 2)); CK(cudaMalloc(&Y, (size_t)M * N * 2)); cudaMemset(X, 0, (size_t)M*K*2);
    // column-major view: Y^T [N, M] = op(W^T) [N, K] * X^T [K, M]. transW=0: W row-major [K, N] = col-major [N, K]
    // (op N, lda N); transW=1: W row-major [N, K] (torch Linear) = col-major [K, N] (op T, lda K).
    cublasLtMatmulDesc_t op; CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = transW ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, transW ? K : N, transW ? N : K, transW ? K : N));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    cublasLtMatmulHeuristicResult_t res[64]; int n = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 64, res, &n));
    float alpha = 1.f, beta = 0.f;
    double first = 0, best = 1e30; int besti = -1;
    for (int i = 0; i < n; ++i) {
      auto run = [&](int it) { return cublasLtMatmul(lt, op, &alpha, W[it % nbuf], la, X, lb, &beta, Y, lc, Y, lc, &res[i].algo, work, wsz, st); };
      bool ok = true;
      for (int w = 0; w < 3; ++w) if (run(w) != CUBLAS_STATUS_SUCCESS) ok = false;
      if (!ok) continue;
      std::vector<float> ts;
      for (int r = 0; r < 7; ++r) {
        cudaEventRecord(e0, st); for (int it = 0; it < 20; ++it) run(it); cudaEventRecord(e1, st); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms * 1000 / 20);
      }
      std::sort(ts.begin(), ts.end()); double t = ts[3];
      if (i == 0) first = t;
      if (t < best) { best = t; besti = i; }
    }
    double bytes = (double)K * N * 2, flops = 2.0 * M * K * N;
    printf("M=%4d %-8s W%s  heuristic#0 %7.1f us (%5.2f TB/s, %4.0f TF/s)  best#%2d of %2d %7.1f us (%5.2f TB/s, %4.0f TF/s)\n",
           M, s.name, transW ? "[N,K]" : "[K,N]", first, bytes / first / 1e6, flops / first / 1e6, besti, n, best,
           bytes / best / 1e6, flops / best / 1e6);
    fflush(stdout);
    for (auto w : W) cudaFree(w); cudaFree(X); cudaFree(Y);
    cublasLtMatmulPreferenceDestroy(pref); cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc); cublasLtMatmulDescDestroy(op);
  }
  return 0;
}
