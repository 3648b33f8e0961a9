// "cuda" backend of raunet_fast.ops.attention_gate: the fused gate as one CUDA kernel.
//
// This file: the host launcher. The kernels live in attention_gate_kernels.cuh (also run
// on the CPU by tests/attention_gate_cuda_emu.cpp), the per-pixel math in
// attention_gate.h. Plain CUDA (no torch headers), so nvcc compiles this file on its own
// (the AOT test does, for sm_80 and sm_90); csrc/attention_gate_cuda.cpp is the torch
// binding and calls attention_gate_cuda_launch() below with raw pointers and the current
// stream.
//
// Kernel: one block of 256 threads per tile of TP pixels (P = N*H*W pixels, NHWC).
// Weights arrive as given to the op (x's dtype, W_x: F x Cx, W_g: F x Cg row-major): no
// packing on the host, so a call is one launch.
//   for each chunk of TF intermediate channels:
//     acc[TP x TF] = sum over K = Cx + Cg channels in chunks of TK:
//         x / g tile (TP x TK) and weight tile (TK x TF) are staged in shared memory as
//         fp32; each thread owns a 4 pixel x 4 channel micro tile.
//     logit[p] += sum_f psi[f] * relu(acc[p][f] + bias[f])   (attention_gate.h epilogue,
//         reduced over the TX threads sharing a pixel row with warp shuffles)
//   alpha[p] = sigmoid(logit[p] + b_psi); out[p][c] = x[p][c] * alpha[p]
// Global loads/stores of x, g and out are 16-byte vectors when every base pointer is
// 16-byte aligned and Cx, Cg are multiples of the vector width, else scalar.
// Half / bfloat16 on sm_80+ use attention_gate_mma_kernel instead (same structure, the
// GEMM on tensor cores with WMMA), unless the caller asks for the CUDA-core kernel.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "attention_gate_kernels.cuh"

namespace raunet_ag {
namespace {

template <typename T, int TF>
cudaError_t launch_tf(const void* x, const void* g, const void* wx, const void* wg,
                      const void* bias, const void* psi, const void* bpsi, void* out, void* alpha,
                      int64_t P, int cx, int cg, int F, bool mma, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = aligned(x) && aligned(g) && aligned(out) && cx % VEC == 0 && cg % VEC == 0;
  const T* xt = static_cast<const T*>(x);
  const T* gt = static_cast<const T*>(g);
  T* ot = static_cast<T*>(out);
  T* at = static_cast<T*>(alpha);
  const T* wxt = static_cast<const T*>(wx);
  const T* wgt = static_cast<const T*>(wg);
  const T* bt = static_cast<const T*>(bias);
  const T* pt = static_cast<const T*>(psi);
  const T* bpt = static_cast<const T*>(bpsi);
  if constexpr (!std::is_same<T, float>::value) {
    if (mma) {
      const int64_t blocks = (P + kMmaTP - 1) / kMmaTP;
      if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
      const dim3 grid(static_cast<unsigned>(blocks));
      if (vec)
        attention_gate_mma_kernel<T, TF, VEC><<<grid, kMmaThreads, 0, stream>>>(
            xt, gt, wxt, wgt, bt, pt, bpt, ot, at, P, cx, cg, F);
      else
        attention_gate_mma_kernel<T, TF, 1><<<grid, kMmaThreads, 0, stream>>>(
            xt, gt, wxt, wgt, bt, pt, bpt, ot, at, P, cx, cg, F);
      return cudaGetLastError();
    }
  }
  constexpr int TP = (kThreads / (TF / 4)) * 4;
  const int64_t blocks = (P + TP - 1) / TP;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (vec)
    attention_gate_kernel<T, TF, VEC><<<grid, kThreads, 0, stream>>>(
        xt, gt, wxt, wgt, bt, pt, bpt, ot, at, P, cx, cg, F);
  else
    attention_gate_kernel<T, TF, 1><<<grid, kThreads, 0, stream>>>(
        xt, gt, wxt, wgt, bt, pt, bpt, ot, at, P, cx, cg, F);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_t(const void* x, const void* g, const void* wx, const void* wg,
                     const void* bias, const void* psi, const void* bpsi, void* out, void* alpha,
                     int64_t P, int cx, int cg, int F, bool mma, cudaStream_t stream) {
  if (F <= 32)
    return launch_tf<T, 32>(x, g, wx, wg, bias, psi, bpsi, out, alpha, P, cx, cg, F, mma, stream);
  return launch_tf<T, 64>(x, g, wx, wg, bias, psi, bpsi, out, alpha, P, cx, cg, F, mma, stream);
}

}  // namespace
}  // namespace raunet_ag

// dtype: 0 = float32, 1 = float16, 2 = bfloat16 (of every tensor). Pointers as documented
// at the kernels; alpha may be nullptr. tensor_cores: half / bfloat16 on sm_80+ run the
// WMMA kernel (else, and for float32, the CUDA-core kernel). Returns the launch error
// (cudaSuccess when launched).
cudaError_t attention_gate_cuda_launch(int dtype, const void* x, const void* g, const void* wx,
                                       const void* wg, const void* bias, const void* psi,
                                       const void* bpsi, void* out, void* alpha, int64_t P, int cx,
                                       int cg, int F, int tensor_cores, cudaStream_t stream) {
  using namespace raunet_ag;
  if (P <= 0) return cudaSuccess;
  if (cx <= 0 || cg <= 0 || F <= 0) return cudaErrorInvalidValue;
  bool mma = false;
  if (tensor_cores && dtype != 0) {
    int dev = 0, major = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess)
      err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (err != cudaSuccess) return err;
    mma = major >= 8;
  }
  switch (dtype) {
    case 0:
      return launch_t<float>(x, g, wx, wg, bias, psi, bpsi, out, alpha, P, cx, cg, F, false, stream);
    case 1:
      return launch_t<__half>(x, g, wx, wg, bias, psi, bpsi, out, alpha, P, cx, cg, F, mma, stream);
    case 2:
      return launch_t<__nv_bfloat16>(x, g, wx, wg, bias, psi, bpsi, out, alpha, P, cx, cg, F, mma,
                                     stream);
    default:
      return cudaErrorInvalidValue;
  }
}
