// "cuda" backend of raunet_fast.ops.attention_gate: the fused gate as one CUDA kernel.
//
// Plain CUDA (no torch headers), so nvcc compiles this file on its own (the AOT test
// does, for sm_80 and sm_90); csrc/attention_gate_cuda.cpp is the torch binding and calls
// attention_gate_cuda_launch() below with raw pointers and the current stream.
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
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "attention_gate.h"

namespace raunet_ag {
namespace {

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

// VEC elements (16 bytes) from a 16-byte aligned address, as floats.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, float* dst) {
  static_assert(sizeof(T) * VEC == 16, "vector loads are 16 bytes");
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src));
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] = to_float<T>(e[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const float* v) {
  static_assert(sizeof(T) * VEC == 16, "vector stores are 16 bytes");
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < VEC; ++j) e[j] = from_float<T>(v[j]);
  *reinterpret_cast<uint4*>(dst) = raw;
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
          uint4 val = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits: +0 in half and bf16
          if (pg < P && k < K)  // cx, cg multiples of VEC: no vector straddles x / g / K
            val = __ldg(reinterpret_cast<const uint4*>(k < cx ? x + pg * cx + k
                                                              : g + pg * cg + (k - cx)));
          *reinterpret_cast<uint4*>(&As[p * LDA + kk]) = val;
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
#pragma unroll 8
      for (int ff = half * (TF / 2); ff < (half + 1) * (TF / 2); ++ff)
        part += psi_term(Cs[p * LDC + ff], bias_s[ff], psi_s[ff]);  // padded f: psi 0
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
