// Multi-scale deformable attention: device dispatch and per-device implementations.
//
// Shapes: value N x S x M x D; spatial_shapes L x 2 (h, w) int64; level_start_index L int64;
// sampling_locations N x Lq x M x L x P x 2 normalised (x, y); attention_weights N x Lq x M x L x P.
// sampling_locations and attention_weights use the accumulation dtype of value: float32 for
// float16 / bfloat16 / float32 values, float64 for float64 values.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

namespace rvos_d2 {

// Validates the inputs (raising an error that names the argument) and runs the kernel of their device.
at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value,
                                                const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights,
                                                const at::Tensor& grad_output);

// Implementations: inputs already validated and contiguous.
at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);
std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value,
                                                    const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output);
#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);
std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output);
// Whether this build holds a kernel image the given GPU can run: {"" or the CUDA error,
// binary (SASS) version, PTX version} of the forward kernel as the driver resolves it.
std::tuple<std::string, int64_t, int64_t> ms_deform_attn_cuda_image(int64_t device);
#endif

}  // namespace rvos_d2
