// Bilinear footprint of one sampling point, shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace rvos_d2 {

// The four pixels around a normalised point (x, y) on an h x w level (align_corners=False),
// their bilinear weights and whether each lies inside the map (outside pixels read zero).
template <typename acc_t>
struct Footprint {
  acc_t lh, lw, hh, hw;  // distances to the low / high neighbour rows (h) and columns (w)
  int64_t offset[4];     // token index within the level of (y0,x0), (y0,x1), (y1,x0), (y1,x1)
  bool inside[4];

  // Returns false when the point is too far outside the map to touch any pixel.
  C10_HOST_DEVICE bool init(acc_t x, acc_t y, int64_t h, int64_t w) {
    const acc_t y_im = y * h - acc_t(0.5);
    const acc_t x_im = x * w - acc_t(0.5);
    if (!(y_im > -1 && x_im > -1 && y_im < h && x_im < w)) return false;
    // Both exceed -1, so truncating the shifted value is the floor.
    const int64_t y0 = static_cast<int64_t>(y_im + 1) - 1;
    const int64_t x0 = static_cast<int64_t>(x_im + 1) - 1;
    lh = y_im - y0;
    lw = x_im - x0;
    hh = 1 - lh;
    hw = 1 - lw;
    for (int k = 0; k < 4; ++k) {
      const int64_t yy = y0 + (k >> 1), xx = x0 + (k & 1);
      inside[k] = yy >= 0 && yy < h && xx >= 0 && xx < w;
      offset[k] = yy * w + xx;
    }
    return true;
  }

  C10_HOST_DEVICE acc_t weight(int k) const { return (k >> 1 ? lh : hh) * (k & 1 ? lw : hw); }

  // Gradients of the sampled value along x and y (pixel units), from dot[k] = <grad, corner k>.
  C10_HOST_DEVICE acc_t d_x(const acc_t* dot) const {
    return hh * (dot[1] - dot[0]) + lh * (dot[3] - dot[2]);
  }
  C10_HOST_DEVICE acc_t d_y(const acc_t* dot) const {
    return hw * (dot[2] - dot[0]) + lw * (dot[3] - dot[1]);
  }
};

}  // namespace rvos_d2
