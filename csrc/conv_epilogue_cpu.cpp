// "cpp" backend of conv3x3_fused: oneDNN/ATen convolution of the folded weights, then the
// fused epilogue of conv_epilogue.h (the math the CUDA kernels run) in one in-place,
// OpenMP-parallel pass over the output.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "conv_epilogue.h"
#include "conv_epilogue_aten.h"

namespace rce = raunet_fast::conv_epilogue;

// y (in place) = relu?(y + bias + sc), one OpenMP-parallel pass (rows of channels-last
// pixels, or NCHW planes).
static void run_epilogue(rce::Prepared& p, bool relu) {
  const int64_t C = p.C, numel = p.y.numel();
  if (numel == 0) return;
  const float* b = p.bias.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.y.scalar_type(), "conv_epilogue_cpu", [&] {
    scalar_t* y = p.y.data_ptr<scalar_t>();
    const scalar_t* s = p.sc.defined() ? p.sc.data_ptr<scalar_t>() : nullptr;
    if (p.inner == 1) {
      const int64_t rows = numel / C;
      const int64_t grain = std::max<int64_t>(1, 16384 / C);
      at::parallel_for(0, rows, grain, [&](int64_t lo, int64_t hi) {
        rce::apply_rows<scalar_t>(y, s, b, lo, hi, C, relu);
      });
    } else {
      const int64_t planes = numel / p.inner;
      const int64_t grain = std::max<int64_t>(1, 16384 / p.inner);
      at::parallel_for(0, planes, grain, [&](int64_t lo, int64_t hi) {
        rce::apply_planes<scalar_t>(y, s, b, lo, hi, C, p.inner, relu);
      });
    }
  });
}

at::Tensor conv3x3_fused_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const std::optional<at::Tensor>& residual,
                             const std::optional<at::Tensor>& shortcut_input,
                             const std::optional<at::Tensor>& shortcut_weight, bool relu) {
  TORCH_CHECK(x.device().is_cpu(), "conv3x3_fused (cpp backend): CPU tensors only");
  rce::Prepared p = rce::prepare(x, weight, bias, residual, shortcut_input, shortcut_weight);
  run_epilogue(p, relu);
  return p.y;
}

// The epilogue alone, after a convolution computed elsewhere (the op's Python side runs
// oneDNN with weights prepacked once): returns relu?(y + bias + sc), in place when y is
// contiguous in its layout.
at::Tensor conv_epilogue_cpu(const at::Tensor& y, const at::Tensor& bias,
                             const std::optional<at::Tensor>& sc, bool relu) {
  TORCH_CHECK(y.device().is_cpu(), "conv epilogue (cpp backend): CPU tensors only");
  rce::Prepared p = rce::operands(y, sc.has_value() ? *sc : at::Tensor(), bias);
  run_epilogue(p, relu);
  return p.y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv3x3_fused", &conv3x3_fused_cpu,
        "relu?(conv3x3(x, w) + bias + (residual | conv1x1(shortcut_input, shortcut_weight)))",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"),
        py::arg("shortcut_input"), py::arg("shortcut_weight"), py::arg("relu"));
  m.def("conv_epilogue", &conv_epilogue_cpu, "relu?(y + bias + sc), in place", py::arg("y"),
        py::arg("bias"), py::arg("sc"), py::arg("relu"));
}
