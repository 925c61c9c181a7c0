// Python bindings of rvos_d2._C.
#include <torch/extension.h>

#include "ms_deform_attn.h"

#define RVOS_D2_STRINGIFY_(x) #x
#define RVOS_D2_STRINGIFY(x) RVOS_D2_STRINGIFY_(x)

namespace {

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Architectures the CUDA kernels were compiled for (TORCH_CUDA_ARCH_LIST at build time, entries
// joined by '_'); empty without CUDA.
std::string cuda_arch_list() {
#if defined(WITH_CUDA) && defined(RVOS_D2_CUDA_ARCH_LIST)
  return RVOS_D2_STRINGIFY(RVOS_D2_CUDA_ARCH_LIST);
#else
  return "";
#endif
}

// {"" or the CUDA error, binary version, PTX version} of the kernel image for a GPU.
std::tuple<std::string, int64_t, int64_t> cuda_kernel_image(int64_t device) {
#ifdef WITH_CUDA
  return rvos_d2::ms_deform_attn_cuda_image(device);
#else
  return {"rvos_d2._C was compiled without CUDA kernels", 0, 0};
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &rvos_d2::ms_deform_attn_forward,
        "Multi-scale deformable attention forward: N x Lq x (M*D) output");
  m.def("ms_deform_attn_backward", &rvos_d2::ms_deform_attn_backward,
        "Multi-scale deformable attention backward: grads of value, locations, weights");
  m.def("has_cuda", &has_cuda, "Whether the extension was compiled with CUDA kernels");
  m.def("cuda_arch_list", &cuda_arch_list,
        "CUDA architectures compiled in (TORCH_CUDA_ARCH_LIST entries joined by '_')");
  m.def("cuda_kernel_image", &cuda_kernel_image,
        "(error or '', binary version, PTX version) of the kernel image for a CUDA device");
}
