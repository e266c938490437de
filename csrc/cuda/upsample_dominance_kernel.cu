// CUDA kernel of clear_native::upsample_dominance. One thread block per
// (image, low-resolution cell): the block finds the cell's surviving classes
// (upsample_dominance_element.h bounds; block-wide reduction, survivors compacted into
// shared memory), then its threads evaluate the survivors at the cell's output
// pixels. Survivors arrive in no fixed order, so the order-independent update
// (kOrdered = false: ties by class index) is used throughout.
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "cuda/launch.cuh"
#include "dominance_element.h"
#include "flag_dispatch.h"
#include "upsample_dominance.h"
#include "upsample_dominance_element.h"

namespace clear_native::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCapacity = 512;  // survivors kept in shared memory per list

template <typename A>
struct SharedList {
  int32_t cls[kCapacity];
  A a[kCapacity], b[kCapacity], c[kCapacity], d[kCapacity];
};

template <typename A, bool kRunnerUp, bool kWeakest>
__global__ void upsample_dominance_cuda_kernel(UpsampleDominanceArgs args) {
  constexpr bool O = false;  // order-independent slots
  const int64_t cb = blockIdx.x, rb = blockIdx.y, n = blockIdx.z;
  const int64_t y_begin = args.row_block_start[rb], y_end = args.row_block_start[rb + 1];
  const int64_t x_begin = args.col_block_start[cb], x_end = args.col_block_start[cb + 1];
  const int64_t i0 = args.row0[y_begin], i1 = args.row1[y_begin];
  const int64_t j0 = args.col0[x_begin], j1 = args.col1[x_begin];
  const int64_t C = args.C, hw = args.h * args.w;
  const A* m = static_cast<const A*>(args.maps) + n * C * hw;
  const int64_t k00 = i0 * args.w + j0, k01 = i0 * args.w + j1, k10 = i1 * args.w + j0,
                k11 = i1 * args.w + j1;
  const int32_t offset = static_cast<int32_t>(args.class_offset);
  const bool bilinear = args.mode == InterpMode::kBilinear;
  const int64_t cell_w = x_end - x_begin, cell_pixels = (y_end - y_begin) * cell_w;

  __shared__ SharedList<A> smax, smin;
  __shared__ CellBounds<A> red[kThreads];
  __shared__ int nmax, nmin;
  const bool prune = bilinear && args.prune != 0 && cell_pixels >= 4 && C > 2;
  if (threadIdx.x == 0) nmax = nmin = 0;
  if (prune) {
    // Bounds and champions of the cell (upsample_dominance_element.h): per thread, then
    // merged by thread 0 into red[0].
    CellBounds<A> b = CellBounds<A>::empty();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const CellCorners<A> x = cell_corners(m + c * hw, k00, k01, k10, k11);
      b.add(static_cast<int32_t>(c), x.lo, x.hi);
    }
    red[threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int i = 1; i < blockDim.x; ++i) b.merge(red[i]);
      red[0] = b;
    }
    __syncthreads();
    b = red[0];
    const CellCorners<A> d1 = champion_corners(m, hw, b.c1, k00, k01, k10, k11),
                         d2 = champion_corners(m, hw, b.c2, k00, k01, k10, k11),
                         de = champion_corners(m, hw, b.e, k00, k01, k10, k11);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const CellCorners<A> x = cell_corners(m + c * hw, k00, k01, k10, k11);
      if (!beaten_in_cell<kRunnerUp>(b, c, x, d1, d2)) {
        const int s = atomicAdd(&nmax, 1);
        if (s < kCapacity) {
          smax.cls[s] = offset + static_cast<int32_t>(c);
          smax.a[s] = x.v[0], smax.b[s] = x.v[1], smax.c[s] = x.v[2], smax.d[s] = x.v[3];
        }
      }
      if (kWeakest && !above_in_cell(b, c, x, de)) {
        const int s = atomicAdd(&nmin, 1);
        if (s < kCapacity) {
          smin.cls[s] = offset + static_cast<int32_t>(c);
          smin.a[s] = x.v[0], smin.b[s] = x.v[1], smin.c[s] = x.v[2], smin.d[s] = x.v[3];
        }
      }
    }
  }
  __syncthreads();
  const bool use_max_list = prune && nmax <= kCapacity;
  const bool use_min_list = prune && nmin <= kCapacity;

  const int64_t plane = args.N * args.H * args.W;
  const A* sv = static_cast<const A*>(args.state_values);
  A* ov = static_cast<A*>(args.out_values);
  const A* rl0 = static_cast<const A*>(args.row_l0);
  const A* rl1 = static_cast<const A*>(args.row_l1);
  const A* cw0 = static_cast<const A*>(args.col_w0);
  const A* cw1 = static_cast<const A*>(args.col_w1);
  for (int64_t q = threadIdx.x; q < cell_pixels; q += blockDim.x) {
    const int64_t y = y_begin + q / cell_w, x = x_begin + q % cell_w;
    const int64_t o = (n * args.H + y) * args.W + x;
    A v1, v2, vm;
    int32_t c1, c2, cm;
    load_slots<O>(sv, args.state_indices, plane, o, v1, c1, v2, c2, vm, cm);
    const A l0 = rl0[y], l1 = rl1[y], w0 = cw0[x], w1 = cw1[x];
    if (use_max_list) {
      for (int s = 0; s < nmax; ++s) {
        const A v = bilerp(smax.a[s], smax.b[s], smax.c[s], smax.d[s], w0, w1, l0, l1);
        dominance_update<O, kRunnerUp, false>(v1, c1, v2, c2, vm, cm, v, smax.cls[s]);
      }
    }
    if (kWeakest && use_min_list) {
      for (int s = 0; s < nmin; ++s) {
        const A v = bilerp(smin.a[s], smin.b[s], smin.c[s], smin.d[s], w0, w1, l0, l1);
        const bool bm = beats_min<O>(v, smin.cls[s], vm, cm);
        vm = bm ? v : vm;
        cm = bm ? smin.cls[s] : cm;
      }
    }
    if (!use_max_list || (kWeakest && !use_min_list)) {
      // No pruning (or too many survivors): every class, from global memory.
      for (int64_t c = 0; c < C; ++c) {
        const A* mc = m + c * hw;
        const A v = bilinear ? bilerp(mc[k00], mc[k01], mc[k10], mc[k11], w0, w1, l0, l1) : mc[k00];
        const int32_t k = offset + static_cast<int32_t>(c);
        if (!use_max_list) dominance_update<O, kRunnerUp, false>(v1, c1, v2, c2, vm, cm, v, k);
        if (kWeakest && !use_min_list) {
          const bool bm = beats_min<O>(v, k, vm, cm);
          vm = bm ? v : vm;
          cm = bm ? k : cm;
        }
      }
    }
    int64_t* oi = args.out_indices;
    store_slots<O>(ov, oi, plane, o, v1, c1, v2, c2, vm, cm);
    const int64_t tc = args.target != nullptr ? args.target[n] - args.class_offset : -1;
    A tv;
    if (tc >= 0 && tc < C) {
      const A* mc = m + tc * hw;
      tv = bilinear ? bilerp(mc[k00], mc[k01], mc[k10], mc[k11], w0, w1, l0, l1) : mc[k00];
    } else if (sv != nullptr) {
      tv = sv[kTargetValue * plane + o];
    } else {
      tv = std::numeric_limits<A>::quiet_NaN();
    }
    ov[kTargetValue * plane + o] = tv;
  }
}

template <typename A, bool R, bool W>
void launch(const UpsampleDominanceArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.num_col_blocks), static_cast<unsigned>(a.num_row_blocks),
                  static_cast<unsigned>(a.N));
  upsample_dominance_cuda_kernel<A, R, W><<<grid, kThreads, 0, stream>>>(a);
}

template <typename A>
void launch_typed(const UpsampleDominanceArgs& a, cudaStream_t stream) {
  // Survivors come in no fixed order: the order-independent update only.
  dispatch_dominance_flags(false, a.runner_up, a.weakest, [&](auto, auto r, auto w) {
    launch<A, decltype(r)::value, decltype(w)::value>(a, stream);
  });
}

}  // namespace

void upsample_dominance_kernel(const UpsampleDominanceArgs& a, void* stream_ptr) {
  if (a.num_row_blocks > 65535 || a.N > 65535)
    throw std::runtime_error("upsample_dominance (CUDA): too many rows or images for one launch");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (a.dtype == torch::headeronly::ScalarType::Double) launch_typed<double>(a, stream);
  else launch_typed<float>(a, stream);
  check_launch("upsample_dominance");
}

}  // namespace clear_native::cuda
