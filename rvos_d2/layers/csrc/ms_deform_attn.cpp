// Input validation and device dispatch of the multi-scale deformable attention op.
#include "ms_deform_attn.h"

namespace rvos_d2 {
namespace {

at::ScalarType accumulation_type(at::ScalarType value_type) {
  return value_type == at::kDouble ? at::kDouble : at::kFloat;
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& value) {
  TORCH_CHECK(t.device() == value.device(), "ms_deform_attn: ", name, " is on ", t.device(),
              " but value is on ", value.device());
}

// Checks ranks, sizes, dtypes and devices; on CPU also that the levels tile S (no device sync).
void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be N x S x M x D, got ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be L x 2, got ", spatial_shapes.sizes());
  const int64_t num_levels = spatial_shapes.size(0);
  TORCH_CHECK(num_levels > 0, "ms_deform_attn: spatial_shapes must hold at least one level");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == num_levels,
              "ms_deform_attn: level_start_index must have ", num_levels, " entries, got ",
              level_start_index.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be N x Lq x M x L x P x 2, got ",
              sampling_locations.sizes());
  TORCH_CHECK(sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2) &&
                  sampling_locations.size(3) == num_levels,
              "ms_deform_attn: sampling_locations ", sampling_locations.sizes(),
              " does not match value ", value.sizes(), " and ", num_levels, " levels");
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must be ", sampling_locations.sizes().slice(0, 5),
              ", got ", attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64, got ",
              level_start_index.scalar_type());
  const auto value_type = value.scalar_type();
  TORCH_CHECK(value_type == at::kFloat || value_type == at::kDouble || value_type == at::kHalf ||
                  value_type == at::kBFloat16,
              "ms_deform_attn: value must be float16, bfloat16, float32 or float64, got ",
              value_type);
  const auto acc = accumulation_type(value_type);
  TORCH_CHECK(sampling_locations.scalar_type() == acc, "ms_deform_attn: sampling_locations must be ",
              acc, " for ", value_type, " value, got ", sampling_locations.scalar_type());
  TORCH_CHECK(attention_weights.scalar_type() == acc, "ms_deform_attn: attention_weights must be ",
              acc, " for ", value_type, " value, got ", attention_weights.scalar_type());
  check_device(spatial_shapes, "spatial_shapes", value);
  check_device(level_start_index, "level_start_index", value);
  check_device(sampling_locations, "sampling_locations", value);
  check_device(attention_weights, "attention_weights", value);
  if (value.is_cpu()) {
    TORCH_CHECK(value_type == at::kFloat || value_type == at::kDouble,
                "ms_deform_attn: the CPU kernel takes float32 or float64 value, got ", value_type);
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const int64_t* hw = shapes.data_ptr<int64_t>();
    const int64_t* start = starts.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < num_levels; ++l) {
      TORCH_CHECK(hw[2 * l] > 0 && hw[2 * l + 1] > 0,
                  "ms_deform_attn: spatial_shapes must be positive, got ", spatial_shapes);
      TORCH_CHECK(start[l] == total, "ms_deform_attn: level_start_index[", l, "] is ", start[l],
                  " but spatial_shapes put that level at ", total);
      total += hw[2 * l] * hw[2 * l + 1];
    }
    TORCH_CHECK(total == value.size(1), "ms_deform_attn: spatial_shapes cover ", total,
                " positions but value has S=", value.size(1));
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value.contiguous(), spatial_shapes.contiguous(),
                                       level_start_index.contiguous(),
                                       sampling_locations.contiguous(),
                                       attention_weights.contiguous());
#else
    TORCH_CHECK(false, "ms_deform_attn: rvos_d2._C was compiled without CUDA support");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: no kernel for device ", value.device());
  return ms_deform_attn_forward_cpu(value.contiguous(), spatial_shapes.contiguous(),
                                    level_start_index.contiguous(),
                                    sampling_locations.contiguous(),
                                    attention_weights.contiguous());
}

std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value,
                                                const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights,
                                                const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const int64_t n = value.size(0), lq = sampling_locations.size(1);
  const int64_t channels = value.size(2) * value.size(3);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == n && grad_output.size(1) == lq &&
                  grad_output.size(2) == channels,
              "ms_deform_attn: grad_output must be ", n, " x ", lq, " x ", channels, ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(), "ms_deform_attn: grad_output is ",
              grad_output.scalar_type(), " but value is ", value.scalar_type());
  check_device(grad_output, "grad_output", value);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(
        value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
        sampling_locations.contiguous(), attention_weights.contiguous(), grad_output.contiguous());
#else
    TORCH_CHECK(false, "ms_deform_attn: rvos_d2._C was compiled without CUDA support");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: no kernel for device ", value.device());
  return ms_deform_attn_backward_cpu(
      value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
      sampling_locations.contiguous(), attention_weights.contiguous(), grad_output.contiguous());
}

}  // namespace rvos_d2
