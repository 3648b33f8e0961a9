// Kernels of the "cuda" backend of raunet_fast.ops.attention_gate (see attention_gate.cu
// for the design). Header-only and free of launch syntax, so that the same code is
// (a) included by attention_gate.cu for nvcc and (b) compiled by g++ on the CPU against
// the small CUDA emulation in tests/attention_gate_cuda_emu.cpp (RAUNET_AG_EMULATE),
// which runs every kernel block by block with OpenMP threads as CUDA threads.
#pragma once

#ifndef RAUNET_AG_EMULATE
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
// alignment assertions exist only in the CPU emulation
#define AG_ASSERT_ALIGNED(ptr, bytes) ((void)0)
#endif

#include <cstdint>

#include "attention_gate.h"

namespace raunet_ag {

constexpr int kThreads = 256;
constexpr int kTK = 32;  // channels per K chunk

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC elements of T as one 16-byte access. Memory holding T values is read and written
// as a struct of T values (never through an unrelated type such as uint4), so the
// vector accesses are well-defined C++ for nvcc and for g++ (the CPU emulation) alike.
template <typename T, int VEC>
struct alignas(16) Pack {
  T e[VEC];
};

// VEC elements (16 bytes) from a 16-byte aligned address, as floats.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, float* dst) {
  static_assert(sizeof(T) * VEC == 16, "vector loads are 16 bytes");
  AG_ASSERT_ALIGNED(src, 16);
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] = to_float<T>(pk.e[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const float* v) {
  static_assert(sizeof(T) * VEC == 16, "vector stores are 16 bytes");
  AG_ASSERT_ALIGNED(dst, 16);
  Pack<T, VEC> pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.e[j] = from_float<T>(v[j]);
  *reinterpret_cast<Pack<T, VEC>*>(dst) = pk;
}

// out[p][:] = x[p][:] * alpha_s[p - p_base] for the np pixels of a block (rows of cx
// channels, NHWC), VEC-wide when VEC > 1 (then cx % VEC == 0 and both pointers 16-byte
// aligned). All NT threads of the block take part.
template <typename T, int VEC, int NT>
__device__ __forceinline__ void scale_rows(const T* __restrict__ x, T* __restrict__ out,
                                           const float* alpha_s, int64_t p_base, int np,
                                           int64_t P, int cx) {
  const int csegs = cx / VEC;  // exact: the vector path needs cx % VEC == 0
  const int64_t total = static_cast<int64_t>(np) * csegs;
  for (int64_t v = threadIdx.x; v < total; v += NT) {
    const int p = static_cast<int>(v / csegs);
    const int c = static_cast<int>(v % csegs) * VEC;
    const int64_t pg = p_base + p;
    if (pg >= P) continue;
    const float a = alpha_s[p];
    if constexpr (VEC > 1) {
      float vals[VEC];
      load_vec<T, VEC>(x + pg * cx + c, vals);
#pragma unroll
      for (int j = 0; j < VEC; ++j) vals[j] *= a;
      store_vec<T, VEC>(out + pg * cx + c, vals);
    } else {
      out[pg * cx + c] = from_float<T>(to_float<T>(x[pg * cx + c]) * a);
    }
  }
}

// T: float / __half / __nv_bfloat16. TF: F chunk (32 or 64). VEC: 16 / sizeof(T) for the
// vector path, 1 for the scalar path.
//   x: P x cx, g: P x cg, out: P x cx (NHWC rows, T);  wx: F x cx, wg: F x cg (row-major,
//   T); bias, psi: F values of T; bpsi: 1 value of T; alpha: P values of T or nullptr.
template <typename T, int TF, int VEC>
__global__ void __launch_bounds__(kThreads, 2)
    attention_gate_kernel(const T* __restrict__ x, const T* __restrict__ g,
                          const T* __restrict__ wx, const T* __restrict__ wg,
                          const T* __restrict__ bias, const T* __restrict__ psi,
                          const T* __restrict__ bpsi, T* __restrict__ out, T* __restrict__ alpha,
                          int64_t P, int cx, int cg, int F) {
  constexpr int TX = TF / 4;           // threads across the F chunk (4 channels each)
  constexpr int TY = kThreads / TX;    // threads across pixels (4 pixels each)
  constexpr int TP = TY * 4;           // pixels per block
  constexpr int SEGS = kTK / VEC;      // vectors per pixel row of one K chunk
  static_assert(TX == 8 || TX == 16, "TF must be 32 or 64");
  static_assert(kTK % VEC == 0, "K chunk must hold whole vectors");

  __shared__ __align__(16) float As[kTK][TP];  // input chunk, transposed: [k][pixel]
  // weight chunk [k][f]; rows padded by 4 floats (float4 reads stay aligned, and the
  // k-fastest staging stores spread over 8 banks instead of one)
  __shared__ __align__(16) float Ws[kTK][TF + 4];
  __shared__ float alpha_s[TP];

  const int tid = threadIdx.x;
  const int tx = tid % TX;
  const int ty = tid / TX;
  const int64_t p_base = static_cast<int64_t>(blockIdx.x) * TP;
  const int K = cx + cg;

  float logit[4] = {0.f, 0.f, 0.f, 0.f};

  for (int f0 = 0; f0 < F; f0 += TF) {
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    for (int k0 = 0; k0 < K; k0 += kTK) {
      // ---- stage the TP x kTK input chunk (x channels first, then g), as fp32
      for (int v = tid; v < TP * SEGS; v += kThreads) {
        const int p = v / SEGS;
        const int kk = (v % SEGS) * VEC;
        const int64_t pg = p_base + p;
        const int k = k0 + kk;
        float vals[VEC];
        if constexpr (VEC > 1) {
          // cx % VEC == 0 and cg % VEC == 0: a vector never straddles x / g or K.
          if (pg < P && k < K) {
            const T* src = k < cx ? x + pg * cx + k : g + pg * cg + (k - cx);
            load_vec<T, VEC>(src, vals);
          } else {
#pragma unroll
            for (int j = 0; j < VEC; ++j) vals[j] = 0.f;
          }
        } else {
          float val = 0.f;
          if (pg < P && k < K) val = to_float<T>(k < cx ? x[pg * cx + k] : g[pg * cg + (k - cx)]);
          vals[0] = val;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) As[kk + j][p] = vals[j];
      }
      // ---- stage the kTK x TF weight chunk (zeros past K and F); k fastest, so the
      //      reads run along the rows of W_x / W_g
      for (int e = tid; e < kTK * TF; e += kThreads) {
        const int kk = e % kTK;
        const int ff = e / kTK;
        const int k = k0 + kk;
        const int f = f0 + ff;
        float w = 0.f;
        if (k < K && f < F)
          w = to_float<T>(k < cx ? wx[static_cast<int64_t>(f) * cx + k]
                                 : wg[static_cast<int64_t>(f) * cg + (k - cx)]);
        Ws[kk][ff] = w;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kTK; ++kk) {
        const float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
        const float4 b = *reinterpret_cast<const float4*>(&Ws[kk][tx * 4]);
        const float av[4] = {a.x, a.y, a.z, a.w};
        const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
    // ---- epilogue of this F chunk: bias, ReLU, psi dot; reduce over the TX lanes of a row
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float part = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int f = f0 + tx * 4 + j;
        if (f < F) part += psi_term(acc[i][j], to_float<T>(bias[f]), to_float<T>(psi[f]));
      }
      // the TX lanes sharing pixel row ty are consecutive and aligned inside one warp
#pragma unroll
      for (int off = TX / 2; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
      logit[i] += part;
    }
  }

  // ---- alpha per pixel
  if (tx == 0) {
    const float b = to_float<T>(bpsi[0]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int p = ty * 4 + i;
      const float a = gate_alpha(logit[i], b);
      alpha_s[p] = a;
      if (alpha != nullptr && p_base + p < P) alpha[p_base + p] = from_float<T>(a);
    }
  }
  __syncthreads();

  // ---- out = x * alpha over the block's pixels (x re-read: an L2 hit)
  scale_rows<T, VEC, kThreads>(x, out, alpha_s, p_base, TP, P, cx);
}

// ------------------------------------------------------------------ tensor-core kernel
// Half / bfloat16 inputs on sm_80+: the same gate with the channel GEMM on tensor cores
// (WMMA 16x16x16, fp32 accumulation). Block: 4 warps, TP = 64 pixels; warp w owns pixel
// rows [16w, 16w + 16) and all TF columns of the F chunk. Per K chunk of 64 channels the
// x / g tile (64 x 64, raw T) and the weight tile (64 x TF, T) are staged in shared
// memory; after the K loop the accumulators go through shared memory (Cs) to the
// attention_gate.h epilogue, two threads per pixel.
constexpr int kMmaThreads = 128;
constexpr int kMmaTP = 64;
constexpr int kMmaTK = 64;

template <typename T, int TF, int VEC>
__global__ void __launch_bounds__(kMmaThreads, 4)
    attention_gate_mma_kernel(const T* __restrict__ x, const T* __restrict__ g,
                              const T* __restrict__ wx, const T* __restrict__ wg,
                              const T* __restrict__ bias, const T* __restrict__ psi,
                              const T* __restrict__ bpsi, T* __restrict__ out,
                              T* __restrict__ alpha, int64_t P, int cx, int cg, int F) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  constexpr int TP = kMmaTP, TK = kMmaTK, NT = kMmaThreads;
  constexpr int LDA = TK + 8;  // T elements; rows stay 16-byte aligned, banks shift by 4
  constexpr int LDB = TF + 8;
  constexpr int LDC = TF + 4;  // floats
  constexpr int NFRAG = TF / 16;
  static_assert(TF == 32 || TF == 64, "TF must be 32 or 64");
  static_assert(VEC == 1 || VEC * sizeof(T) == 16, "16-byte vectors");

  __shared__ __align__(32) T As[TP * LDA];      // [pixel][k]
  __shared__ __align__(32) T Bs[TK * LDB];      // [k][f]
  __shared__ __align__(32) float Cs[TP * LDC];  // [pixel][f], fp32 accumulators
  __shared__ float bias_s[TF];
  __shared__ float psi_s[TF];
  __shared__ float logit_s[TP];
  __shared__ float alpha_s[TP];

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int64_t p_base = static_cast<int64_t>(blockIdx.x) * TP;
  const int K = cx + cg;
  const T zero = from_float<T>(0.f);
  if (tid < TP) logit_s[tid] = 0.f;

  for (int f0 = 0; f0 < F; f0 += TF) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NFRAG];
#pragma unroll
    for (int j = 0; j < NFRAG; ++j) wmma::fill_fragment(acc[j], 0.f);
    if (tid < TF) {
      const int f = f0 + tid;
      bias_s[tid] = f < F ? to_float<T>(bias[f]) : 0.f;
      psi_s[tid] = f < F ? to_float<T>(psi[f]) : 0.f;
    }

    for (int k0 = 0; k0 < K; k0 += TK) {
      // ---- x / g chunk: TP x TK of T (x channels first, then g; zeros past P and K)
      if constexpr (VEC > 1) {
        constexpr int SEGS = TK / VEC;
        for (int v = tid; v < TP * SEGS; v += NT) {
          const int p = v / SEGS;
          const int kk = (v % SEGS) * VEC;
          const int64_t pg = p_base + p;
          const int k = k0 + kk;
          Pack<T, VEC> val;
#pragma unroll
          for (int j = 0; j < VEC; ++j) val.e[j] = zero;
          if (pg < P && k < K) {  // cx, cg multiples of VEC: no vector straddles x / g / K
            const T* src = k < cx ? x + pg * cx + k : g + pg * cg + (k - cx);
            AG_ASSERT_ALIGNED(src, 16);
            val = *reinterpret_cast<const Pack<T, VEC>*>(src);
          }
          AG_ASSERT_ALIGNED(&As[p * LDA + kk], 16);
          *reinterpret_cast<Pack<T, VEC>*>(&As[p * LDA + kk]) = val;
        }
      } else {
        for (int e = tid; e < TP * TK; e += NT) {
          const int p = e / TK;
          const int kk = e % TK;
          const int64_t pg = p_base + p;
          const int k = k0 + kk;
          T val = zero;
          if (pg < P && k < K) val = k < cx ? x[pg * cx + k] : g[pg * cg + (k - cx)];
          As[p * LDA + kk] = val;
        }
      }
      // ---- weight chunk: Bs[k][f] = W[f][k] (k fastest: reads along W's rows)
      for (int e = tid; e < TK * TF; e += NT) {
        const int kk = e % TK;
        const int ff = e / TK;
        const int k = k0 + kk;
        const int f = f0 + ff;
        T w = zero;
        if (k < K && f < F)
          w = k < cx ? wx[static_cast<int64_t>(f) * cx + k]
                     : wg[static_cast<int64_t>(f) * cg + (k - cx)];
        Bs[kk * LDB + ff] = w;
      }
      __syncthreads();
#pragma unroll 1
      for (int kk = 0; kk < TK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, As + warp * 16 * LDA + kk, LDA);
#pragma unroll
        for (int j = 0; j < NFRAG; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
          wmma::load_matrix_sync(b, Bs + kk * LDB + j * 16, LDB);
          wmma::mma_sync(acc[j], a, b, acc[j]);
        }
      }
      __syncthreads();
    }
    // ---- epilogue of this F chunk: accumulators -> Cs, then two threads per pixel
#pragma unroll
    for (int j = 0; j < NFRAG; ++j)
      wmma::store_matrix_sync(Cs + warp * 16 * LDC + j * 16, acc[j], LDC, wmma::mem_row_major);
    __syncthreads();
    {
      const int p = tid / 2;       // 128 threads, 64 pixels
      const int half = tid % 2;    // each takes half of the TF columns
      float part = 0.f;
      // real f only: a padded f's accumulator may be 0 * inf = NaN, which psi 0 keeps
#pragma unroll 8
      for (int ff = half * (TF / 2); ff < (half + 1) * (TF / 2); ++ff)
        if (f0 + ff < F) part += psi_term(Cs[p * LDC + ff], bias_s[ff], psi_s[ff]);
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      if (half == 0) logit_s[p] += part;
    }
    __syncthreads();  // Cs, bias_s, psi_s are rewritten by the next F chunk
  }

  // ---- alpha per pixel, then out = x * alpha
  if (tid < TP) {
    const float a = gate_alpha(logit_s[tid], to_float<T>(bpsi[0]));
    alpha_s[tid] = a;
    if (alpha != nullptr && p_base + tid < P) alpha[p_base + tid] = from_float<T>(a);
  }
  __syncthreads();
  scale_rows<T, VEC, NT>(x, out, alpha_s, p_base, TP, P, cx);
#else
  __trap();  // never launched below sm_80 (the host checks the device)
#endif
}

}  // namespace raunet_ag
