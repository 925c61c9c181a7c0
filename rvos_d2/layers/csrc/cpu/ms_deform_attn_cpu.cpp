// CPU kernels of multi-scale deformable attention, threaded with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "ms_deform_attn.h"
#include "ms_deform_attn_footprint.h"

namespace rvos_d2 {
namespace {

struct Sizes {
  int64_t n, s, m, d, lq, levels, points;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0),
          value.size(1),
          value.size(2),
          value.size(3),
          sampling_locations.size(1),
          sampling_locations.size(3),
          sampling_locations.size(4)};
}

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locations, const scalar_t* weights, scalar_t* output,
                    const Sizes& z) {
  const int64_t rows = z.n * z.lq * z.m;  // one row per (batch, query, head)
  const int64_t token_stride = z.m * z.d;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t head = row % z.m;
      const int64_t batch = row / (z.m * z.lq);
      const scalar_t* value_row = value + batch * z.s * token_stride + head * z.d;
      const scalar_t* loc = locations + row * z.levels * z.points * 2;
      const scalar_t* attn = weights + row * z.levels * z.points;
      scalar_t* out = output + row * z.d;
      std::fill(out, out + z.d, scalar_t(0));
      for (int64_t l = 0; l < z.levels; ++l) {
        const int64_t h = shapes[2 * l], w = shapes[2 * l + 1];
        const scalar_t* level = value_row + starts[l] * token_stride;
        for (int64_t p = 0; p < z.points; ++p, loc += 2, ++attn) {
          Footprint<scalar_t> f;
          if (!f.init(loc[0], loc[1], h, w)) continue;
          for (int k = 0; k < 4; ++k) {
            if (!f.inside[k]) continue;
            const scalar_t c = *attn * f.weight(k);
            const scalar_t* v = level + f.offset[k] * token_stride;
            for (int64_t d = 0; d < z.d; ++d) out[d] += c * v[d];
          }
        }
      }
    }
  });
}

// Parallel over (batch, head) pairs: each owns a disjoint slice of grad_value, so no atomics.
template <typename scalar_t>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const scalar_t* locations, const scalar_t* weights,
                     const scalar_t* grad_output, scalar_t* grad_value, scalar_t* grad_locations,
                     scalar_t* grad_weights, const Sizes& z) {
  const int64_t token_stride = z.m * z.d;
  at::parallel_for(0, z.n * z.m, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t batch = pair / z.m, head = pair % z.m;
      const int64_t base = batch * z.s * token_stride + head * z.d;
      for (int64_t q = 0; q < z.lq; ++q) {
        const int64_t row = (batch * z.lq + q) * z.m + head;
        const scalar_t* g = grad_output + row * z.d;
        const int64_t first = row * z.levels * z.points;
        for (int64_t l = 0; l < z.levels; ++l) {
          const int64_t h = shapes[2 * l], w = shapes[2 * l + 1];
          const int64_t level = base + starts[l] * token_stride;
          for (int64_t p = 0; p < z.points; ++p) {
            const int64_t i = first + l * z.points + p;
            Footprint<scalar_t> f;
            if (!f.init(locations[2 * i], locations[2 * i + 1], h, w)) continue;
            const scalar_t a = weights[i];
            // dot[k] = <grad_output, value at corner k>; zero for corners outside the map.
            scalar_t dot[4] = {0, 0, 0, 0};
            for (int k = 0; k < 4; ++k) {
              if (!f.inside[k]) continue;
              const scalar_t* v = value + level + f.offset[k] * token_stride;
              scalar_t* gv = grad_value + level + f.offset[k] * token_stride;
              const scalar_t c = a * f.weight(k);
              scalar_t acc = 0;
              for (int64_t d = 0; d < z.d; ++d) {
                acc += g[d] * v[d];
                gv[d] += c * g[d];
              }
              dot[k] = acc;
            }
            grad_weights[i] = f.weight(0) * dot[0] + f.weight(1) * dot[1] +
                              f.weight(2) * dot[2] + f.weight(3) * dot[3];
            grad_locations[2 * i] = a * w * f.d_x(dot);
            grad_locations[2 * i + 1] = a * h * f.d_y(dot);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const Sizes z = sizes_of(value, sampling_locations);
  auto output = at::empty({z.n, z.lq, z.m * z.d}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                             level_start_index.data_ptr<int64_t>(),
                             sampling_locations.data_ptr<scalar_t>(),
                             attention_weights.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), z);
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value,
                                                    const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output) {
  const Sizes z = sizes_of(value, sampling_locations);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
        attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
        grad_value.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(),
        grad_weights.data_ptr<scalar_t>(), z);
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace rvos_d2
