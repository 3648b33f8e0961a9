// Fused conv epilogue math: y = relu?(acc + bias[c] + shortcut), host and device.
//
// The one place where the per-element math of the "cuda" and "cpp" conv3x3_fused backends
// lives. Compiled by nvcc for the GPU (conv_epilogue.cuh / conv_epilogue.cu) and by the host
// compiler for the CPU extension (conv_epilogue_cpu.cpp), so CPU tests prove the same math
// the GPU runs. No ATen / CUDA dependency: T is any type convertible to and from float
// (float, double, c10::Half, c10::BFloat16).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RAUNET_HD __host__ __device__ __forceinline__
#else
#define RAUNET_HD inline
#endif

namespace raunet_fast {
namespace conv_epilogue {

// One element: acc is the conv output (no bias), shortcut the residual or the projected
// 1x1 shortcut (0 when there is none). ReLU keeps NaN (like torch.relu).
RAUNET_HD float apply(float acc, float bias, float shortcut, bool relu) {
  const float v = acc + bias + shortcut;
  return (relu && v < 0.f) ? 0.f : v;
}

// Channels-last rows: y, sc are [rows, C] contiguous (NHWC viewed as (N*H*W) x C);
// rows [row_begin, row_end). sc may be null. Updates y in place.
template <typename T>
RAUNET_HD void apply_rows(T* y, const T* sc, const float* bias, int64_t row_begin,
                          int64_t row_end, int64_t C, bool relu) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    T* yr = y + r * C;
    const T* sr = sc ? sc + r * C : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const float s = sr ? static_cast<float>(sr[c]) : 0.f;
      yr[c] = static_cast<T>(apply(static_cast<float>(yr[c]), bias[c], s, relu));
    }
  }
}

// NCHW planes: y, sc are [N*C, HW] contiguous; plane p has channel p % C.
template <typename T>
RAUNET_HD void apply_planes(T* y, const T* sc, const float* bias, int64_t plane_begin,
                            int64_t plane_end, int64_t C, int64_t HW, bool relu) {
  for (int64_t p = plane_begin; p < plane_end; ++p) {
    const float b = bias[p % C];
    T* yp = y + p * HW;
    const T* sp = sc ? sc + p * HW : nullptr;
    for (int64_t i = 0; i < HW; ++i) {
      const float s = sp ? static_cast<float>(sp[i]) : 0.f;
      yp[i] = static_cast<T>(apply(static_cast<float>(yp[i]), b, s, relu));
    }
  }
}

// Flat element i of a tensor whose channel index is (i / inner) % C
// (inner = 1 for channels-last, H*W for NCHW).
template <typename T>
RAUNET_HD void apply_one(T* y, const T* sc, const float* bias, int64_t i, int64_t C,
                         int64_t inner, bool relu) {
  const int64_t c = (i / inner) % C;
  const float s = sc ? static_cast<float>(sc[i]) : 0.f;
  y[i] = static_cast<T>(apply(static_cast<float>(y[i]), bias[c], s, relu));
}

}  // namespace conv_epilogue
}  // namespace raunet_fast
