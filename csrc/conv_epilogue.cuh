// CUDA kernels of the fused conv epilogue (raw pointers; no ATen, compiles standalone with
// nvcc). Math from conv_epilogue.h. Launched by conv_epilogue.cu after a cuDNN convolution.
#pragma once

#include <cstdint>
#ifndef RAUNET_CE_EMULATE  // tests/conv_epilogue_cuda_emu.cpp runs the kernels on the CPU
#include <cuda_runtime.h>
#endif

#include "conv_epilogue.h"

namespace raunet_fast {
namespace conv_epilogue {

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Vectorised channels-last kernel: y, sc are [rows, C] contiguous with C % VEC == 0 and
// 16-byte aligned base pointers, so each thread's VEC elements are one aligned 16-byte
// access and share consecutive channels c0 .. c0+VEC-1. Grid-stride over n_vec = numel/VEC.
template <typename T, int VEC, bool HAS_SC, bool RELU>
__global__ void epilogue_vec_kernel(T* __restrict__ y, const T* __restrict__ sc,
                                    const float* __restrict__ bias, int64_t n_vec, int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec;
       v += stride) {
    const int64_t i0 = v * VEC;
    const int64_t c0 = i0 % C;
    Pack<T, VEC> py = reinterpret_cast<const Pack<T, VEC>*>(y)[v];
    Pack<T, VEC> ps;
    if (HAS_SC) ps = reinterpret_cast<const Pack<T, VEC>*>(sc)[v];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float s = HAS_SC ? static_cast<float>(ps.v[j]) : 0.f;
      py.v[j] = static_cast<T>(apply(static_cast<float>(py.v[j]), __ldg(bias + c0 + j), s, RELU));
    }
    reinterpret_cast<Pack<T, VEC>*>(y)[v] = py;
  }
}

// Scalar kernel for any layout: channel of element i is (i / inner) % C.
template <typename T>
__global__ void epilogue_scalar_kernel(T* __restrict__ y, const T* __restrict__ sc,
                                       const float* __restrict__ bias, int64_t numel, int64_t C,
                                       int64_t inner, bool relu) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride)
    apply_one(y, sc, bias, i, C, inner, relu);
}

// Elements per thread of the vectorised kernel for these operands, or 1 for the scalar
// kernel: vectors only for channels-last (inner == 1) with C % VEC == 0 (each vector holds
// consecutive channels of one pixel) and 16-byte aligned y and sc.
template <typename T>
inline int epilogue_vec_width(const T* y, const T* sc, int64_t C, int64_t inner) {
  constexpr int VEC = 16 / sizeof(T) > 0 ? static_cast<int>(16 / sizeof(T)) : 1;
  const bool aligned = (reinterpret_cast<uintptr_t>(y) % 16 == 0) &&
                       (sc == nullptr || reinterpret_cast<uintptr_t>(sc) % 16 == 0);
  return (VEC > 1 && inner == 1 && C % VEC == 0 && aligned) ? VEC : 1;
}

inline int epilogue_blocks(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  const int64_t cap = 65535LL * 8;  // grid-stride beyond this
  if (b > cap) b = cap;
  return static_cast<int>(b < 1 ? 1 : b);
}

#ifndef RAUNET_CE_EMULATE
template <typename T, int VEC, bool HAS_SC>
void launch_vec(T* y, const T* sc, const float* bias, int64_t numel, int64_t C, bool relu,
                cudaStream_t stream) {
  const int threads = 256;
  const int64_t n_vec = numel / VEC;
  const int blocks = epilogue_blocks(n_vec, threads);
  if (relu)
    epilogue_vec_kernel<T, VEC, HAS_SC, true><<<blocks, threads, 0, stream>>>(y, sc, bias, n_vec, C);
  else
    epilogue_vec_kernel<T, VEC, HAS_SC, false><<<blocks, threads, 0, stream>>>(y, sc, bias, n_vec, C);
}

// y (in place) = relu?(y + bias[c] + sc). inner: 1 (channels-last) or H*W (NCHW).
// Vectorised when channels-last, C % VEC == 0 and pointers are 16-byte aligned.
template <typename T>
void launch_epilogue(T* y, const T* sc, const float* bias, int64_t numel, int64_t C,
                     int64_t inner, bool relu, cudaStream_t stream) {
  if (numel == 0) return;
  constexpr int VEC = 16 / sizeof(T) > 0 ? static_cast<int>(16 / sizeof(T)) : 1;
  if (VEC > 1 && epilogue_vec_width(y, sc, C, inner) == VEC) {
    if (sc) launch_vec<T, VEC, true>(y, sc, bias, numel, C, relu, stream);
    else launch_vec<T, VEC, false>(y, sc, bias, numel, C, relu, stream);
    return;
  }
  const int threads = 256;
  epilogue_scalar_kernel<T><<<epilogue_blocks(numel, threads), threads, 0, stream>>>(
      y, sc, bias, numel, C, inner, relu);
}
#endif  // RAUNET_CE_EMULATE

}  // namespace conv_epilogue
}  // namespace raunet_fast
