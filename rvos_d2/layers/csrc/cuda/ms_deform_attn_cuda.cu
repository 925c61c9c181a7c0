// CUDA kernels of multi-scale deformable attention: one warp per (batch, query, head) row, lanes
// over channels. Values may be float16 / bfloat16 / float32 / float64; sums are kept in
// at::opmath_type (float32 for the 16-bit types) and the value gradient is accumulated with
// atomics in that type, then cast.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "ms_deform_attn.h"
#include "ms_deform_attn_footprint.h"

namespace rvos_d2 {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

struct Sizes {
  int64_t rows, lq, s, m, d, levels, points;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  const int64_t n = value.size(0), lq = sampling_locations.size(1), m = value.size(2);
  return {n * lq * m, lq, value.size(1), m, value.size(3), sampling_locations.size(3),
          sampling_locations.size(4)};
}

unsigned int num_blocks(const Sizes& z) {
  const int64_t blocks = (z.rows * kWarp + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "ms_deform_attn: too many queries (",
              z.rows, " rows)");
  return static_cast<unsigned int>(blocks);
}

// Levels whose extent does not fit in S are skipped, so no read leaves the value tensor even
// when the caller passed inconsistent index tensors (the Python wrapper rejects those).
__device__ inline bool level_fits(int64_t start, int64_t h, int64_t w, int64_t s) {
  return start >= 0 && h > 0 && w > 0 && start + h * w <= s;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const acc_t* __restrict__ locations,
                   const acc_t* __restrict__ weights, scalar_t* __restrict__ output, Sizes z) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= z.rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = z.m * z.d;  // between consecutive tokens
  const scalar_t* value_row = value + (row / (z.m * z.lq)) * z.s * stride + (row % z.m) * z.d;
  const acc_t* loc = locations + row * z.levels * z.points * 2;
  const acc_t* attn = weights + row * z.levels * z.points;
  for (int64_t d = lane; d < z.d; d += kWarp) {
    acc_t sum = 0;
    for (int64_t l = 0; l < z.levels; ++l) {
      const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], start = starts[l];
      if (!level_fits(start, h, w, z.s)) continue;
      const scalar_t* level = value_row + start * stride + d;
      for (int64_t p = 0; p < z.points; ++p) {
        const int64_t i = l * z.points + p;
        Footprint<acc_t> f;
        if (!f.init(loc[2 * i], loc[2 * i + 1], h, w)) continue;
        acc_t sample = 0;
        for (int k = 0; k < 4; ++k) {
          if (f.inside[k]) sample += f.weight(k) * static_cast<acc_t>(level[f.offset[k] * stride]);
        }
        sum += attn[i] * sample;
      }
    }
    output[row * z.d + d] = static_cast<scalar_t>(sum);
  }
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const acc_t* __restrict__ locations,
                    const acc_t* __restrict__ weights, const scalar_t* __restrict__ grad_output,
                    acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_locations,
                    acc_t* __restrict__ grad_weights, Sizes z) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= z.rows) return;  // the whole warp leaves together
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = z.m * z.d;
  const int64_t base = (row / (z.m * z.lq)) * z.s * stride + (row % z.m) * z.d;
  const scalar_t* g = grad_output + row * z.d;
  const int64_t first = row * z.levels * z.points;
  for (int64_t l = 0; l < z.levels; ++l) {
    const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], start = starts[l];
    if (!level_fits(start, h, w, z.s)) continue;
    const int64_t level = base + start * stride;
    for (int64_t p = 0; p < z.points; ++p) {
      const int64_t i = first + l * z.points + p;
      Footprint<acc_t> f;
      // Every lane reads the same point, so this branch is uniform across the warp.
      if (!f.init(locations[2 * i], locations[2 * i + 1], h, w)) continue;
      const acc_t a = weights[i];
      acc_t dot[4] = {0, 0, 0, 0};  // this lane's share of <grad_output, corner value>
      for (int64_t d = lane; d < z.d; d += kWarp) {
        const acc_t gd = static_cast<acc_t>(g[d]);
        for (int k = 0; k < 4; ++k) {
          if (!f.inside[k]) continue;
          const int64_t idx = level + f.offset[k] * stride + d;
          dot[k] += gd * static_cast<acc_t>(value[idx]);
          atomicAdd(grad_value + idx, a * f.weight(k) * gd);
        }
      }
      const acc_t gw = warp_sum(f.weight(0) * dot[0] + f.weight(1) * dot[1] +
                                f.weight(2) * dot[2] + f.weight(3) * dot[3]);
      const acc_t gx = warp_sum(f.d_x(dot));
      const acc_t gy = warp_sum(f.d_y(dot));
      if (lane == 0) {
        grad_weights[i] = gw;
        grad_locations[2 * i] = a * w * gx;
        grad_locations[2 * i + 1] = a * h * gy;
      }
    }
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes z = sizes_of(value, sampling_locations);
  auto output = at::empty({value.size(0), z.lq, z.m * z.d}, value.options());
  if (z.rows == 0 || z.d == 0) return output.zero_();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<num_blocks(z), kThreads, 0, stream>>>(
            value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<acc_t>(),
            attention_weights.data_ptr<acc_t>(), output.data_ptr<scalar_t>(), z);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output) {
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes z = sizes_of(value, sampling_locations);
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(sampling_locations.dtype()));
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  if (z.rows > 0 && z.d > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t><<<num_blocks(z), kThreads, 0, stream>>>(
              value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
              level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<acc_t>(),
              attention_weights.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(),
              grad_value.data_ptr<acc_t>(), grad_locations.data_ptr<acc_t>(),
              grad_weights.data_ptr<acc_t>(), z);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
}

std::tuple<std::string, int64_t, int64_t> ms_deform_attn_cuda_image(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attributes;
  const cudaError_t status = cudaFuncGetAttributes(&attributes, forward_kernel<float, float>);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later launches are unaffected
    return {cudaGetErrorString(status), 0, 0};
  }
  return {"", attributes.binaryVersion, attributes.ptxVersion};
}

}  // namespace rvos_d2
