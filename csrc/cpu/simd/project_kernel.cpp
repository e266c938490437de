// CPU kernel of clear_native::upsample_dominance: the dominance of the
// bilinearly (or nearest-) upsampled class maps, without materialising them.
// Compiled once per CPU capability (see CMakeLists.txt).
//
// Work item: one image and one block of output rows that share their source
// rows (a row of low-resolution cells). Two ways to evaluate it, both exact and
// bit-identical (the same arithmetic, no FMA contraction: CMakeLists.txt):
//  - dense rows (few classes, or cells of a few pixels): each source row is
//    interpolated horizontally once per class, h[c][x] = m[c][i][j0(x)]*w0(x) +
//    m[c][i][j1(x)]*w1(x) (cached for the two rows in use), and every output
//    row is h0*l0 + h1*l1 for all classes, 8 pixels per AVX2 register;
//  - pruned cells: for each cell of the row, the classes that cannot be best,
//    runner-up or weakest anywhere in the cell are pruned once
//    (project_element.h), then the cell's pixels evaluate only the survivors.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/ScalarType.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/simd_kernel.h"
#include "dominance_element.h"
#include "flag_dispatch.h"
#include "project.h"
#include "project_element.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

#ifdef CN_HAVE_VEC8
using avx2::load8;
using avx2::set1;
using avx2::Vec8f;
#endif

// Auto choice (prune == 1): pruned cells from this many classes and cells of
// this many output pixels on, dense rows below. Tuned on a 2-core EPYC with
// class maps W.F of ReLU features (N=8..64, C=32..1000, h=7..28, H=28..224):
// cells were 2-10x faster from 64-pixel cells on, 1.1-4.7x slower at 16. On
// maps without shared structure (independent random classes) pruning keeps
// most classes and dense rows are up to 1.8x faster at these sizes.
constexpr int64_t kCellsMinClasses = 32;
constexpr double kCellsMinCellPixels = 64.0;

// Running slots of a run of output pixels (one row of one cell).
template <typename A>
struct Slots {
  std::vector<A> v1, v2, vm;
  std::vector<int32_t> i1, i2, im;
  void resize(int64_t n) {
    v1.resize(n), v2.resize(n), vm.resize(n), i1.resize(n), i2.resize(n), im.resize(n);
  }
};

#ifdef CN_HAVE_VEC8
// The slots of 8 consecutive pixels, in AVX2 registers (float).
struct Regs8 {
  avx2::Vec8f v1, v2, vm;
  avx2::Vec8i i1, i2, im;
  static Regs8 load(const Slots<float>& s, int64_t p) {
    using avx2::load8;
    return {load8(s.v1.data() + p), load8(s.v2.data() + p), load8(s.vm.data() + p),
            load8(s.i1.data() + p), load8(s.i2.data() + p), load8(s.im.data() + p)};
  }
  void store(Slots<float>& s, int64_t p) const {
    using avx2::store8;
    store8(s.v1.data() + p, v1), store8(s.v2.data() + p, v2), store8(s.vm.data() + p, vm);
    store8(s.i1.data() + p, i1), store8(s.i2.data() + p, i2), store8(s.im.data() + p, im);
  }
};
#endif

// Survivors of one cell: class ids and their 4 corners.
template <typename A>
struct Survivors {
  std::vector<int32_t> cls;
  std::vector<A> a, b, c, d;
  void clear() { cls.clear(), a.clear(), b.clear(), c.clear(), d.clear(); }
  void push(int32_t k, A va, A vb, A vc, A vd) {
    cls.push_back(k), a.push_back(va), b.push_back(vb), c.push_back(vc), d.push_back(vd);
  }
  int64_t size() const { return static_cast<int64_t>(cls.size()); }
};

template <typename A, bool kOrdered, typename I>
CN_INLINE void min_update(A& vm, I& im, A v, I c) {
  const auto bm = beats_min<kOrdered>(v, c, vm, im);
  vm = select(bm, v, vm);
  im = select(bm, c, im);
}

template <typename A, bool kOrdered, bool kRunnerUp, bool kWeakest>
struct Worker {
  const UpsampleDominanceArgs& a;
  const A* maps;
  const A* row_l0;
  const A* row_l1;
  const A* col_w0;
  const A* col_w1;
  const A* sv;
  A* ov;
  int64_t plane;  // N * H * W
  Slots<A> s;
  Survivors<A> smax, smin;
  // Dense rows: two cached horizontally interpolated source rows, (C, Wp) each.
  int64_t Wp;
  std::vector<A> hbuf;
  int64_t hn[2] = {-1, -1}, hi_[2] = {-1, -1};

  explicit Worker(const UpsampleDominanceArgs& args)
      : a(args),
        maps(static_cast<const A*>(args.maps)),
        row_l0(static_cast<const A*>(args.row_l0)),
        row_l1(static_cast<const A*>(args.row_l1)),
        col_w0(static_cast<const A*>(args.col_w0)),
        col_w1(static_cast<const A*>(args.col_w1)),
        sv(static_cast<const A*>(args.state_values)),
        ov(static_cast<A*>(args.out_values)),
        plane(args.N * args.H * args.W),
        Wp((args.W + 7) / 8 * 8) {
    s.resize(Wp);
  }

  // Slots of output pixels [o, o + len) from the state, or empty.
  void load(int64_t o, int64_t len) {
    for (int64_t p = 0; p < len; ++p)
      load_slots<kOrdered>(sv, a.state_indices, plane, o + p, s.v1[p], s.i1[p], s.v2[p], s.i2[p],
                           s.vm[p], s.im[p]);
  }

  void store(int64_t o, int64_t len) {
    for (int64_t p = 0; p < len; ++p)
      store_slots<kOrdered>(ov, a.out_indices, plane, o + p, s.v1[p], s.i1[p], s.v2[p], s.i2[p],
                            s.vm[p], s.im[p]);
  }

  // Finds the survivors of the cell with corners (i0, i1) x (j0, j1).
  void prune_cell(const A* m, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool prune) {
    const int64_t C = a.C, hw = a.h * a.w;
    const int32_t offset = static_cast<int32_t>(a.class_offset);
    smax.clear();
    smin.clear();
    const int64_t k00 = i0 * a.w + j0, k01 = i0 * a.w + j1, k10 = i1 * a.w + j0, k11 = i1 * a.w + j1;
    if (!prune) {
      for (int64_t c = 0; c < C; ++c) {
        const A* mc = m + c * hw;
        smax.push(offset + static_cast<int32_t>(c), mc[k00], mc[k01], mc[k10], mc[k11]);
      }
      if (kWeakest) smin = smax;
      return;
    }
    CellBounds<A> b = CellBounds<A>::empty();
    for (int64_t c = 0; c < C; ++c) {
      const CellCorners<A> x = cell_corners(m + c * hw, k00, k01, k10, k11);
      b.add(static_cast<int32_t>(c), x.lo, x.hi);
    }
    const CellCorners<A> d1 = champion_corners(m, hw, b.c1, k00, k01, k10, k11),
                         d2 = champion_corners(m, hw, b.c2, k00, k01, k10, k11),
                         de = champion_corners(m, hw, b.e, k00, k01, k10, k11);
    for (int64_t c = 0; c < C; ++c) {
      const CellCorners<A> x = cell_corners(m + c * hw, k00, k01, k10, k11);
      const int32_t k = offset + static_cast<int32_t>(c);
      if (!beaten_in_cell<kRunnerUp>(b, c, x, d1, d2)) smax.push(k, x.v[0], x.v[1], x.v[2], x.v[3]);
      if (kWeakest && !above_in_cell(b, c, x, de)) smin.push(k, x.v[0], x.v[1], x.v[2], x.v[3]);
    }
  }

  // Folds the survivors into output pixels x in [x0, x1) of one row.
  void eval_row(A l0, A l1, int64_t x0, int64_t x1) {
    const int64_t len = x1 - x0;
    int64_t p = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      const Vec8f vl0 = set1(l0), vl1 = set1(l1);
      for (; p + 8 <= len; p += 8) {
        const Vec8f w0 = load8(col_w0 + x0 + p), w1 = load8(col_w1 + x0 + p);
        Regs8 r = Regs8::load(s, p);
        for (int64_t k = 0; k < smax.size(); ++k) {
          const Vec8f v = bilerp(set1(smax.a[k]), set1(smax.b[k]), set1(smax.c[k]), set1(smax.d[k]),
                                 w0, w1, vl0, vl1);
          dominance_update<kOrdered, kRunnerUp, false>(r.v1, r.i1, r.v2, r.i2, r.vm, r.im, v,
                                                       set1(smax.cls[k]));
        }
        if constexpr (kWeakest) {
          for (int64_t k = 0; k < smin.size(); ++k) {
            const Vec8f v = bilerp(set1(smin.a[k]), set1(smin.b[k]), set1(smin.c[k]), set1(smin.d[k]),
                                   w0, w1, vl0, vl1);
            min_update<Vec8f, kOrdered>(r.vm, r.im, v, set1(smin.cls[k]));
          }
        }
        r.store(s, p);
      }
    }
#endif
    for (; p < len; ++p) {
      const A w0 = col_w0[x0 + p], w1 = col_w1[x0 + p];
      for (int64_t k = 0; k < smax.size(); ++k) {
        const A v = bilerp(smax.a[k], smax.b[k], smax.c[k], smax.d[k], w0, w1, l0, l1);
        dominance_update<kOrdered, kRunnerUp, false>(s.v1[p], s.i1[p], s.v2[p], s.i2[p], s.vm[p],
                                                     s.im[p], v, smax.cls[k]);
      }
      if constexpr (kWeakest) {
        for (int64_t k = 0; k < smin.size(); ++k) {
          const A v = bilerp(smin.a[k], smin.b[k], smin.c[k], smin.d[k], w0, w1, l0, l1);
          min_update<A, kOrdered>(s.vm[p], s.im[p], v, smin.cls[k]);
        }
      }
    }
  }

  // Target plane for output pixels [o, o + len) of row y, columns [x0, x1).
  void target_row(int64_t n, int64_t y, int64_t x0, int64_t x1, int64_t o) {
    A* tv = ov + kTargetValue * plane + o;
    const int64_t len = x1 - x0;
    const int64_t tc = a.target != nullptr ? a.target[n] - a.class_offset : -1;
    if (tc >= 0 && tc < a.C) {
      const A* m = maps + (n * a.C + tc) * a.h * a.w;
      if (a.mode == InterpMode::kNearest) {
        const A* r = m + a.row0[y] * a.w;
        for (int64_t p = 0; p < len; ++p) tv[p] = r[a.col0[x0 + p]];
      } else {
        const A* r0 = m + a.row0[y] * a.w;
        const A* r1 = m + a.row1[y] * a.w;
        const A l0 = row_l0[y], l1 = row_l1[y];
        for (int64_t p = 0; p < len; ++p) {
          const int64_t x = x0 + p;
          tv[p] = bilerp(r0[a.col0[x]], r0[a.col1[x]], r1[a.col0[x]], r1[a.col1[x]], col_w0[x],
                         col_w1[x], l0, l1);
        }
      }
    } else if (sv != nullptr) {
      for (int64_t p = 0; p < len; ++p) tv[p] = sv[kTargetValue * plane + o + p];
    } else {
      for (int64_t p = 0; p < len; ++p) tv[p] = std::numeric_limits<A>::quiet_NaN();
    }
  }

  // Nearest: every output pixel of a cell copies one source pixel, so the
  // class loop runs once per cell and its slots are merged into each pixel.
  void nearest_cell(const A* m, int64_t i, int64_t j, int64_t x0, int64_t x1) {
    const int64_t hw = a.h * a.w, k = i * a.w + j;
    const int32_t offset = static_cast<int32_t>(a.class_offset);
    A c1 = empty_value<kOrdered, true, A>(), c2 = c1, cm = empty_value<kOrdered, false, A>();
    int32_t k1 = kNoClass, k2 = kNoClass, km = kNoClass;
    for (int64_t c = 0; c < a.C; ++c)
      dominance_update<kOrdered, kRunnerUp, kWeakest>(c1, k1, c2, k2, cm, km, m[c * hw + k],
                                                      offset + static_cast<int32_t>(c));
    for (int64_t p = x0; p < x1; ++p) {
      const int64_t q = p - x0;
      dominance_update<kOrdered, kRunnerUp, false>(s.v1[q], s.i1[q], s.v2[q], s.i2[q], s.vm[q],
                                                   s.im[q], c1, k1);
      if constexpr (kRunnerUp)
        dominance_update<kOrdered, kRunnerUp, false>(s.v1[q], s.i1[q], s.v2[q], s.i2[q], s.vm[q],
                                                     s.im[q], c2, k2);
      if constexpr (kWeakest) min_update<A, kOrdered>(s.vm[q], s.im[q], cm, km);
    }
  }

  // Horizontally interpolated source row i of image n, all classes: (C, Wp),
  // zero-padded. Two rows are cached; `keep` is the other row in use.
  const A* hrow(int64_t n, int64_t i, int64_t keep) {
    for (int k = 0; k < 2; ++k)
      if (hn[k] == n && hi_[k] == i) return hbuf.data() + k * a.C * Wp;
    const int k = (hn[0] == n && hi_[0] == keep) ? 1 : 0;
    if (hbuf.empty()) hbuf.assign(2 * a.C * Wp, A(0));
    A* out = hbuf.data() + k * a.C * Wp;
    const A* m = maps + n * a.C * a.h * a.w + i * a.w;
    for (int64_t c = 0; c < a.C; ++c) {
      const A* r = m + c * a.h * a.w;
      A* o = out + c * Wp;
      for (int64_t x = 0; x < a.W; ++x) o[x] = r[a.col0[x]] * col_w0[x] + r[a.col1[x]] * col_w1[x];
    }
    hn[k] = n, hi_[k] = i;
    return out;
  }

  // Dense rows: one image, one block of rows, every class at every pixel.
  void run_dense(int64_t n, int64_t rb) {
    const int64_t y_begin = a.row_block_start[rb], y_end = a.row_block_start[rb + 1];
    const int64_t i0 = a.row0[y_begin], i1 = a.row1[y_begin];
    const A* h0 = hrow(n, i0, i1);
    const A* h1 = hrow(n, i1, i0);
    const int32_t offset = static_cast<int32_t>(a.class_offset);
    const int64_t C = a.C;
    const int64_t tc = a.target != nullptr ? a.target[n] - a.class_offset : -1;
    for (int64_t y = y_begin; y < y_end; ++y) {
      const int64_t o = (n * a.H + y) * a.W;
      const A l0 = row_l0[y], l1 = row_l1[y];
      load(o, a.W);
      int64_t x = 0;
#ifdef CN_HAVE_VEC8
      if constexpr (std::is_same_v<A, float>) {
        const Vec8f vl0 = set1(l0), vl1 = set1(l1);
        for (; x < Wp; x += 8) {
          Regs8 r = Regs8::load(s, x);
          for (int64_t c = 0; c < C; ++c) {
            const Vec8f v = load8(h0 + c * Wp + x) * vl0 + load8(h1 + c * Wp + x) * vl1;
            dominance_update<kOrdered, kRunnerUp, kWeakest>(r.v1, r.i1, r.v2, r.i2, r.vm, r.im, v,
                                                            set1(offset + static_cast<int32_t>(c)));
          }
          r.store(s, x);
        }
      }
#endif
      for (; x < a.W; ++x) {
        for (int64_t c = 0; c < C; ++c) {
          const A v = h0[c * Wp + x] * l0 + h1[c * Wp + x] * l1;
          dominance_update<kOrdered, kRunnerUp, kWeakest>(s.v1[x], s.i1[x], s.v2[x], s.i2[x], s.vm[x],
                                                          s.im[x], v, offset + static_cast<int32_t>(c));
        }
      }
      store(o, a.W);
      A* tv = ov + kTargetValue * plane + o;
      if (tc >= 0 && tc < C) {
        for (int64_t p = 0; p < a.W; ++p) tv[p] = h0[tc * Wp + p] * l0 + h1[tc * Wp + p] * l1;
      } else if (sv != nullptr) {
        for (int64_t p = 0; p < a.W; ++p) tv[p] = sv[kTargetValue * plane + o + p];
      } else {
        for (int64_t p = 0; p < a.W; ++p) tv[p] = std::numeric_limits<A>::quiet_NaN();
      }
    }
  }

  // One image, one block of rows.
  void run(int64_t n, int64_t rb, bool dense) {
    if (dense) return run_dense(n, rb);
    const int64_t y_begin = a.row_block_start[rb], y_end = a.row_block_start[rb + 1];
    const A* m = maps + n * a.C * a.h * a.w;
    const int64_t i0 = a.row0[y_begin], i1 = a.row1[y_begin];
    for (int64_t cb = 0; cb < a.num_col_blocks; ++cb) {
      const int64_t x0 = a.col_block_start[cb], x1 = a.col_block_start[cb + 1];
      const int64_t j0 = a.col0[x0], j1 = a.col1[x0];
      const bool bilinear = a.mode == InterpMode::kBilinear;
      if (bilinear) {
        // Pruning pays when the cell has enough pixels to amortise it.
        const bool prune = a.prune != 0 && (y_end - y_begin) * (x1 - x0) >= 4 && a.C > 2;
        prune_cell(m, i0, i1, j0, j1, prune);
      }
      for (int64_t y = y_begin; y < y_end; ++y) {
        const int64_t o = (n * a.H + y) * a.W + x0;
        load(o, x1 - x0);
        if (bilinear) eval_row(row_l0[y], row_l1[y], x0, x1);
        else nearest_cell(m, i0, j0, x0, x1);
        store(o, x1 - x0);
        target_row(n, y, x0, x1, o);
      }
    }
  }
};

// Dense rows or pruned cells (bilinear only; nearest evaluates each cell's
// classes once either way). Dense rows cost a few vector ops per 8 pixels and
// class; pruning costs scalar work per class and cell plus the survivors'
// evaluation, so it pays only with many classes and cells of many pixels.
bool use_dense_rows(const UpsampleDominanceArgs& a) {
  if (a.mode != InterpMode::kBilinear || a.prune == 2) return false;
  if (a.prune == 0) return true;
  const double cell_pixels = static_cast<double>(a.H) * static_cast<double>(a.W) /
                             static_cast<double>(std::max<int64_t>(1, a.num_row_blocks * a.num_col_blocks));
  return a.C < kCellsMinClasses || cell_pixels < kCellsMinCellPixels;
}

template <typename A, bool kOrdered, bool kRunnerUp, bool kWeakest>
void run_all(const UpsampleDominanceArgs& a) {
  const bool dense = use_dense_rows(a);
  const int64_t items = a.N * a.num_row_blocks;
  // Cost of one item ~ C * pixels of a row block; aim at GRAIN_SIZE elements.
  const int64_t per_item = std::max<int64_t>(1, a.C * (a.H / std::max<int64_t>(1, a.num_row_blocks)) * a.W);
  const int64_t grain = std::max<int64_t>(1, 32768 / per_item);
  torch::stable::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    Worker<A, kOrdered, kRunnerUp, kWeakest> worker(a);
    for (int64_t t = begin; t < end; ++t) worker.run(t / a.num_row_blocks, t % a.num_row_blocks, dense);
  });
}

template <typename A>
void run_typed(const UpsampleDominanceArgs& a) {
  dispatch_dominance_flags(a.ordered, a.runner_up, a.weakest, [&](auto o, auto r, auto w) {
    run_all<A, decltype(o)::value, decltype(r)::value, decltype(w)::value>(a);
  });
}

}  // namespace

void upsample_dominance_kernel(const UpsampleDominanceArgs& a) {
  if (a.dtype == torch::headeronly::ScalarType::Double) run_typed<double>(a);
  else run_typed<float>(a);
}

}  // namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY
