// Python binding of the "cuda" backend of conv3x3_fused (conv_epilogue.cu); kept out of
// the .cu so nvcc never compiles pybind11.
#include <optional>

#include <torch/extension.h>

at::Tensor conv3x3_fused_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const std::optional<at::Tensor>& residual,
                              const std::optional<at::Tensor>& shortcut_input,
                              const std::optional<at::Tensor>& shortcut_weight, bool relu);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv3x3_fused", &conv3x3_fused_cuda,
        "relu?(conv3x3(x, w) + bias + (residual | conv1x1(shortcut_input, shortcut_weight)))",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"),
        py::arg("shortcut_input"), py::arg("shortcut_weight"), py::arg("relu"));
}
