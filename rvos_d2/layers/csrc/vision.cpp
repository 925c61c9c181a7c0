// Python bindings of rvos_d2._C.
#include <torch/extension.h>

#include "ms_deform_attn.h"

namespace {

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &rvos_d2::ms_deform_attn_forward,
        "Multi-scale deformable attention forward: N x Lq x (M*D) output");
  m.def("ms_deform_attn_backward", &rvos_d2::ms_deform_attn_backward,
        "Multi-scale deformable attention backward: grads of value, locations, weights");
  m.def("has_cuda", &has_cuda, "Whether the extension was compiled with CUDA kernels");
}
