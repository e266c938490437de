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
//    (upsample_dominance_element.h): an interval test over every class (8 classes per
//    AVX2 register, on class-contiguous corners: the maps themselves when
//    their classes are contiguous, else transposed source rows), then a
//    champion test of the few candidates left against the candidates with the
//    largest (smallest) corner sums. The survivors are interpolated
//    horizontally once per cell (r0 = a*w0 + b*w1, r1 = c*w0 + d*w1 over its
//    columns); each block of up to 32 rows x 16 columns prunes the survivors
//    again against their values at its corner pixels (Worker::sub_prune),
//    and every pixel is r0*l0 + r1*l1 per block survivor, in registers,
//    16 pixels at a time, with dominance_update_filled once two survivors
//    have filled the slots; the output goes out with non-temporal stores,
//    plane by plane. The candidate lists are built branch-free (left-packed
//    class ids, avx2::compress_lanes), their corners gathered afterwards.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/ScalarType.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/simd_kernel.h"
#ifdef CN_HAVE_VEC8
#include "cpu/dominance_vec.h"
#endif
#include "dominance_element.h"
#include "flag_dispatch.h"
#include "upsample_dominance.h"
#include "upsample_dominance_element.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

#ifdef CN_HAVE_VEC8
using avx2::load8;
using avx2::set1;
using avx2::store_slot8;
using avx2::stream_slots8;
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

// Survivors of one cell: class ids and their 4 corners, in class order.
// Capacity C + 8: the packed vector stores of the pruning write whole
// vectors of 8 at the end.
template <typename A>
struct Survivors {
  std::vector<int32_t> cls;
  std::vector<A> a, b, c, d;
  int64_t n = 0;
  void reserve(int64_t cap) { cls.resize(cap), a.resize(cap), b.resize(cap), c.resize(cap), d.resize(cap); }
  void clear() { n = 0; }
  void push(int32_t k, A va, A vb, A vc, A vd) {
    cls[n] = k, a[n] = va, b[n] = vb, c[n] = vc, d[n] = vd;
    ++n;
  }
  int64_t size() const { return n; }
};

template <typename A, bool kOrdered, typename I>
CN_INLINE void min_update(A& vm, I& im, A v, I c) {
  const auto bm = beats_min<kOrdered>(v, c, vm, im);
  vm = select(bm, v, vm);
  im = select(bm, c, im);
}

// min_update for a slot that holds a class, and a class c above it
// (dominance_update_filled's weakest part).
template <typename A, typename I>
CN_INLINE void min_update_filled(A& vm, I& im, A v, I c) {
  im = take_class(v < vm, c, im);
  vm = min_of(v, vm);
}

// The classes of a cell that passed the interval test: class within the
// chunk, corners, largest |corner| (CellCorners::abs) and corner sum (the
// champions are the candidates with the largest / smallest sums).
template <typename A>
struct Candidates {
  std::vector<int32_t> c;
  std::vector<A> v0, v1, v2, v3, abs, key;
  int n = 0;
  void reserve(int64_t cap) {
    c.resize(cap), v0.resize(cap), v1.resize(cap), v2.resize(cap), v3.resize(cap), abs.resize(cap), key.resize(cap);
  }
  void clear() { n = 0; }
  void push(int32_t k, A a, A b, A cc, A d, A ab) {
    c[n] = k, v0[n] = a, v1[n] = b, v2[n] = cc, v3[n] = d, abs[n] = ab, key[n] = (a + b) + (cc + d);
    ++n;
  }
  void push(int32_t k, const CellCorners<A>& x) { push(k, x.v[0], x.v[1], x.v[2], x.v[3], x.abs()); }
  int size() const { return n; }
  CellCorners<A> corners(int i) const { return corners_of(v0[i], v1[i], v2[i], v3[i]); }
};

#ifdef CN_HAVE_VEC8
// Stores the lanes of v selected by a mask (`perm`: its avx2::compress_lanes) at
// dst (writes 8 lanes; those past the selected count are scratch).
CN_INLINE void pack_store(float* dst, __m256 v, __m256i perm) {
  _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, perm));
}
CN_INLINE void pack_store(int32_t* dst, __m256i v, __m256i perm) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, perm));
}
#endif

// Champions per cell and slot: a candidate beaten at all 4 corners (by more
// than the rounding margin) by two champions (one without the runner-up) is
// skipped for the best / runner-up; one champion below it at all 4 corners
// skips it for the weakest. More champions prune more, at O(candidates x
// champions); the sub-blocks (Worker::sub_prune) prune the survivors again.
// On the class maps of a pretrained EfficientNet-Lite0 (N=8, C=1000, 7x7 ->
// 224x224; 73 / 120 of the 1000 classes pass the interval test per cell),
// survivors per pixel for the best / the weakest: 12.5 / 12.7 after the cell
// with 6 / 4 champions, 6.6 / 5.0 after the sub-block (12 / 8 and 8 per
// sub-block of 16 rows: 10.7 / 10.7, then 4.2 / 2.9, but 5-8% slower).
constexpr int kMaxChampions = 6;
constexpr int kMinChampions = 4;
// Output columns of a cell evaluated together: the survivors' horizontal
// interpolation over them is computed once per cell, not per row.
constexpr int64_t kColChunk = 64;

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
  // Pruned cells: two source rows (image tn[k], row ti[k]) transposed to
  // class-contiguous (w, Cp) (when the maps' classes are not contiguous); the
  // candidates of a cell and how many champions beat each; the horizontal
  // interpolation of its survivors (and target class) over up to kColChunk
  // columns: per class r0 = a*w0 + b*w1, r1 = c*w0 + d*w1.
  int64_t Cp;
  std::vector<A> trow;
  int64_t tn[2] = {-1, -1}, ti[2] = {-1, -1};
  Candidates<A> cmax, cmin;
  std::vector<float> scores;  // champions(): the candidates' scores
  std::vector<int32_t> beaten;
  std::vector<A> rbuf;
  A w0l[kColChunk], w1l[kColChunk];
  // Non-temporal output stores (full, aligned vectors of the pruned-cells
  // path): the output, 40 bytes a pixel, is written once and not read back,
  // so its cache lines need not be fetched first (1.3-1.4x faster at N=8,
  // C=1000, 7 -> 224). Needs 32-byte aligned planes.
  bool stream = false;
  // 16-lane (AVX-512) evaluation with 64-byte non-temporal stores: needs
  // 64-byte aligned planes.
  bool stream16 = false;
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
        Cp((args.C + 7) / 8 * 8),
        Wp((args.W + 7) / 8 * 8) {
    s.resize(Wp);
    cmax.reserve(Cp + 16), cmin.reserve(Cp + 16);
    scores.resize(Cp + 8);
    smax.reserve(Cp + 8), smin.reserve(Cp + 8);
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      sub.reserve(Cp + 8), selmax.resize(Cp + 8), selmin.resize(Cp + 8), sabs.resize(2 * Cp + 16);
      ident.resize(Cp + 8);
      for (int64_t k = 0; k < Cp + 8; ++k) ident[k] = static_cast<int32_t>(k);
    }
#endif
    const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
    stream = ((addr(args.out_values) | addr(args.out_indices)) & 31) == 0 && plane % 8 == 0;
    stream16 = ((addr(args.out_values) | addr(args.out_indices)) & 63) == 0 && plane % 16 == 0;
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

  // Class-contiguous source rows i0 and i1 of image n: row r, column j at
  // rows[r] + j * rs. The maps themselves when classes are contiguous, else
  // transposed copies of the rows, two kept (consecutive row blocks share one).
  const A* rows[2];
  int64_t rs;
  void corner_rows(int64_t n, int64_t i0, int64_t i1) {
    const A* m = maps + n * a.stride_n;
    if (a.stride_c == 1) {
      rows[0] = m + i0 * a.stride_h, rows[1] = m + i1 * a.stride_h;
      rs = a.stride_w;
      return;
    }
    if (trow.empty()) trow.resize(2 * a.w * Cp);
    rows[0] = source_row(m, n, i0, i1);
    rows[1] = source_row(m, n, i1, i0);
    rs = Cp;
  }

  // Row i of image n (maps m), transposed into a slot of trow that does not
  // hold row `keep`.
  const A* source_row(const A* m, int64_t n, int64_t i, int64_t keep) {
    for (int k = 0; k < 2; ++k)
      if (tn[k] == n && ti[k] == i) return trow.data() + k * a.w * Cp;
    const int k = tn[0] == n && ti[0] == keep ? 1 : 0;
    A* out = trow.data() + k * a.w * Cp;
    const A* src = m + i * a.stride_h;
    int64_t c = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      if (a.stride_w == 1 && a.w <= 8) {
        // 8 classes at a time: their rows (w <= 8 contiguous columns, masked
        // loads) as an 8x8 block, transposed in registers.
        const __m256i cols = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(a.w)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (; c + 8 <= a.C; c += 8) {
          Vec8f r[8];
          for (int l = 0; l < 8; ++l) r[l].v = _mm256_maskload_ps(src + (c + l) * a.stride_c, cols);
          avx2::transpose8(r);
          for (int64_t j = 0; j < a.w; ++j) _mm256_storeu_ps(out + j * Cp + c, r[j].v);
        }
      }
    }
#endif
    for (; c < a.C; ++c)
      for (int64_t j = 0; j < a.w; ++j) out[j * Cp + c] = src[c * a.stride_c + j * a.stride_w];
    tn[k] = n, ti[k] = i;
    return out;
  }


  // Interval-test thresholds over every class of the cell whose corners (per
  // class) are ca, cb, cc, cd: tmax, the second-largest min corner (the
  // largest without the runner-up), and tmin, the smallest max corner.
  void thresholds(const A* ca, const A* cb, const A* cc, const A* cd, A& tmax, A& tmin) const {
    const A inf = std::numeric_limits<A>::infinity();
    A t1 = -inf, t2 = -inf, bmin = inf;
    int64_t c = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      // Per lane, then over the lanes.
      __m256 v1 = _mm256_set1_ps(-inf), v2 = v1, vb = _mm256_set1_ps(inf);
#ifdef CN_HAVE_VEC16
      {  // 16 classes at a time, folded into the 8 lanes after
        __m512 w1 = _mm512_set1_ps(-inf), w2 = w1, wb = _mm512_set1_ps(inf);
        for (; c + 16 <= a.C; c += 16) {
          __m512 lo, hi;
          bounds16(ca + c, cb + c, cc + c, cd + c, lo, hi);
          w2 = _mm512_max_ps(w2, _mm512_min_ps(w1, lo));
          w1 = _mm512_max_ps(w1, lo);
          wb = _mm512_min_ps(wb, hi);
        }
        // Lanes l and l + 8: the top two of their four values, the smaller max.
        const __m256 a1 = _mm512_castps512_ps256(w1), b1 = _mm512_extractf32x8_ps(w1, 1);
        const __m256 a2 = _mm512_castps512_ps256(w2), b2 = _mm512_extractf32x8_ps(w2, 1);
        v1 = _mm256_max_ps(a1, b1);
        v2 = _mm256_max_ps(_mm256_min_ps(a1, b1), _mm256_max_ps(a2, b2));
        vb = _mm256_min_ps(_mm512_castps512_ps256(wb), _mm512_extractf32x8_ps(wb, 1));
      }
#endif
      for (; c + 8 <= a.C; c += 8) {
        __m256 lo, hi;
        bounds8(ca + c, cb + c, cc + c, cd + c, lo, hi);
        v2 = _mm256_max_ps(v2, _mm256_min_ps(v1, lo));
        v1 = _mm256_max_ps(v1, lo);
        vb = _mm256_min_ps(vb, hi);
      }
      alignas(32) float l1[8], l2[8], lb[8];
      _mm256_store_ps(l1, v1), _mm256_store_ps(l2, v2), _mm256_store_ps(lb, vb);
      for (int l = 0; l < 8; ++l) {
        keep_top2_value(l1[l], t1, t2);
        keep_top2_value(l2[l], t1, t2);
        bmin = lb[l] < bmin ? lb[l] : bmin;
      }
    }
#endif
    for (; c < a.C; ++c) {
      const CellCorners<A> x = corners_of(ca[c], cb[c], cc[c], cd[c]);
      keep_top2_value(x.lo, t1, t2);
      bmin = x.hi < bmin ? x.hi : bmin;
    }
    tmax = kRunnerUp ? t2 : t1;
    tmin = bmin;
  }

  static CN_INLINE void keep_top2_value(A v, A& t1, A& t2) {
    if (v > t1) t2 = t1, t1 = v;
    else if (v > t2) t2 = v;
  }

#ifdef CN_HAVE_VEC8
  // Min / max corner of 8 classes, -inf / +inf where a corner is NaN (as
  // corners_of).
  static CN_INLINE void bounds8(const float* pa, const float* pb, const float* pc, const float* pd,
                                __m256& lo, __m256& hi) {
    const __m256 va = _mm256_loadu_ps(pa), vb = _mm256_loadu_ps(pb), vc = _mm256_loadu_ps(pc),
                 vd = _mm256_loadu_ps(pd);
    const __m256 nan = _mm256_or_ps(_mm256_cmp_ps(va, vb, _CMP_UNORD_Q), _mm256_cmp_ps(vc, vd, _CMP_UNORD_Q));
    const float inf = std::numeric_limits<float>::infinity();
    lo = _mm256_blendv_ps(_mm256_min_ps(_mm256_min_ps(va, vb), _mm256_min_ps(vc, vd)),
                          _mm256_set1_ps(-inf), nan);
    hi = _mm256_blendv_ps(_mm256_max_ps(_mm256_max_ps(va, vb), _mm256_max_ps(vc, vd)),
                          _mm256_set1_ps(inf), nan);
  }

#ifdef CN_HAVE_VEC16
  // bounds8 and margin8 for 16 classes.
  static CN_INLINE void bounds16(const float* pa, const float* pb, const float* pc, const float* pd,
                                 __m512& lo, __m512& hi) {
    const __m512 va = _mm512_loadu_ps(pa), vb = _mm512_loadu_ps(pb), vc = _mm512_loadu_ps(pc),
                 vd = _mm512_loadu_ps(pd);
    const __mmask16 nan = _mm512_cmp_ps_mask(va, vb, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(vc, vd, _CMP_UNORD_Q);
    const float inf = std::numeric_limits<float>::infinity();
    lo = _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_min_ps(va, vb), _mm512_min_ps(vc, vd)), _mm512_set1_ps(-inf));
    hi = _mm512_mask_blend_ps(nan, _mm512_max_ps(_mm512_max_ps(va, vb), _mm512_max_ps(vc, vd)), _mm512_set1_ps(inf));
  }
  static CN_INLINE __m512 margin16(__m512 x, __m512 y) {
    const __m512 sum = _mm512_add_ps(_mm512_abs_ps(x), _mm512_abs_ps(y));
    return _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(16.0f * std::numeric_limits<float>::epsilon()), sum),
                         _mm512_set1_ps(std::numeric_limits<float>::min()));
  }
#endif

  // prune_margin(x, y) of upsample_dominance_element.h, 8 lanes.
  template <int kEps = 16>
  static CN_INLINE __m256 margin8(__m256 x, __m256 y) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 sum = _mm256_add_ps(_mm256_andnot_ps(sign, x), _mm256_andnot_ps(sign, y));
    return _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(kEps * std::numeric_limits<float>::epsilon()), sum),
                         _mm256_set1_ps(std::numeric_limits<float>::min()));
  }
#endif

#ifdef CN_HAVE_VEC8
  // The corners, largest |corner| and corner sum of the candidates whose
  // class ids are set (Candidates::push's values), 8 at a time.
  static void gather_corners(Candidates<float>& cd, const float* ca, const float* cb, const float* cc,
                             const float* cdd) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < cd.n; i += 8) {
      const __m256i ids = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&cd.c[i]));
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(cd.n - i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 mask = _mm256_castsi256_ps(live), zero = _mm256_setzero_ps();
      const __m256 va = _mm256_mask_i32gather_ps(zero, ca, ids, mask, 4),
                   vb = _mm256_mask_i32gather_ps(zero, cb, ids, mask, 4),
                   vc = _mm256_mask_i32gather_ps(zero, cc, ids, mask, 4),
                   vd = _mm256_mask_i32gather_ps(zero, cdd, ids, mask, 4);
      const __m256 nan = _mm256_or_ps(_mm256_cmp_ps(va, vb, _CMP_UNORD_Q), _mm256_cmp_ps(vc, vd, _CMP_UNORD_Q));
      const float inf = std::numeric_limits<float>::infinity();
      const __m256 lo = _mm256_min_ps(_mm256_min_ps(va, vb), _mm256_min_ps(vc, vd));
      const __m256 hi = _mm256_max_ps(_mm256_max_ps(va, vb), _mm256_max_ps(vc, vd));
      const __m256 ab = _mm256_blendv_ps(_mm256_max_ps(_mm256_andnot_ps(sign, lo), _mm256_andnot_ps(sign, hi)),
                                         _mm256_set1_ps(inf), nan);
      _mm256_storeu_ps(&cd.v0[i], va), _mm256_storeu_ps(&cd.v1[i], vb);
      _mm256_storeu_ps(&cd.v2[i], vc), _mm256_storeu_ps(&cd.v3[i], vd);
      _mm256_storeu_ps(&cd.abs[i], ab);
      _mm256_storeu_ps(&cd.key[i], _mm256_add_ps(_mm256_add_ps(va, vb), _mm256_add_ps(vc, vd)));
    }
  }
#endif

  // The classes of the cell that pass the interval test (upsample_dominance_element.h:
  // below_everywhere / above_everywhere), in class order.
  void candidates(const A* ca, const A* cb, const A* cc, const A* cd, A tmax, A tmin) {
    cmax.clear();
    cmin.clear();
    int64_t c = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      const __m256 vtmax = _mm256_set1_ps(tmax), vtmin = _mm256_set1_ps(tmin);
#ifdef CN_HAVE_VEC16
      {  // 16 classes at a time, the class ids compressed into the lists
        const __m512 wtmax = _mm512_set1_ps(tmax), wtmin = _mm512_set1_ps(tmin);
        const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; c + 16 <= a.C; c += 16) {
          __m512 lo, hi;
          bounds16(ca + c, cb + c, cc + c, cd + c, lo, hi);
          const __mmask16 keep_max = static_cast<__mmask16>(
              ~_mm512_cmp_ps_mask(hi, _mm512_sub_ps(wtmax, margin16(hi, wtmax)), _CMP_LT_OQ));
          const __m512i cls = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(c)), lanes);
          _mm512_storeu_si512(&cmax.c[cmax.n], _mm512_maskz_compress_epi32(keep_max, cls));
          cmax.n += __builtin_popcount(keep_max);
          if constexpr (kWeakest) {
            const __mmask16 keep_min = static_cast<__mmask16>(
                ~_mm512_cmp_ps_mask(lo, _mm512_add_ps(wtmin, margin16(lo, wtmin)), _CMP_GT_OQ));
            _mm512_storeu_si512(&cmin.c[cmin.n], _mm512_maskz_compress_epi32(keep_min, cls));
            cmin.n += __builtin_popcount(keep_min);
          }
        }
      }
#endif
      for (; c + 8 <= a.C; c += 8) {
        __m256 lo, hi;
        bounds8(ca + c, cb + c, cc + c, cd + c, lo, hi);
        // below_everywhere(hi, tmax): hi < tmax - margin; above_everywhere(lo, tmin).
        const __m256 below = _mm256_cmp_ps(hi, _mm256_sub_ps(vtmax, margin8(hi, vtmax)), _CMP_LT_OQ);
        unsigned keep_max = ~static_cast<unsigned>(_mm256_movemask_ps(below)) & 0xffu, keep_min = 0;
        if constexpr (kWeakest) {
          const __m256 above = _mm256_cmp_ps(lo, _mm256_add_ps(vtmin, margin8(lo, vtmin)), _CMP_GT_OQ);
          keep_min = ~static_cast<unsigned>(_mm256_movemask_ps(above)) & 0xffu;
        }
        // Branch-free: the selected class ids packed to the end of each list.
        const __m256i cls = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        pack_store(&cmax.c[cmax.n], cls, avx2::compress_lanes(keep_max));
        cmax.n += __builtin_popcount(keep_max);
        if constexpr (kWeakest) {
          pack_store(&cmin.c[cmin.n], cls, avx2::compress_lanes(keep_min));
          cmin.n += __builtin_popcount(keep_min);
        }
      }
      for (; c < a.C; ++c) {
        const CellCorners<A> x = corners_of(ca[c], cb[c], cc[c], cd[c]);
        if (!below_everywhere(x.hi, tmax)) cmax.c[cmax.n++] = static_cast<int32_t>(c);
        if (kWeakest && !above_everywhere(x.lo, tmin)) cmin.c[cmin.n++] = static_cast<int32_t>(c);
      }
      gather_corners(cmax, ca, cb, cc, cd);
      if constexpr (kWeakest) gather_corners(cmin, ca, cb, cc, cd);
      return;
    }
#endif
    for (; c < a.C; ++c) {
      const CellCorners<A> x = corners_of(ca[c], cb[c], cc[c], cd[c]);
      if (!below_everywhere(x.hi, tmax)) cmax.push(static_cast<int32_t>(c), x);
      if (kWeakest && !above_everywhere(x.lo, tmin)) cmin.push(static_cast<int32_t>(c), x);
    }
  }

  // Indices of the (at most) k candidates with the largest (kLargest) or
  // smallest finite corner sums.
  template <bool kLargest>
  int champions(const Candidates<A>& cand, int k, int* out) {
    int n = 0;
    if (cand.size() <= k) {  // every finite one
      for (int i = 0; i < cand.size(); ++i)
        if (cand.key[i] - cand.key[i] == A(0)) out[n++] = i;
      return n;
    }
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      // k rounds of a vector arg-max over the scores (the key, negated for the
      // smallest; -inf for non-finite keys, the lanes past the end and the
      // champions already taken): no data-dependent branches per candidate.
      const int m = cand.size();
      const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
      for (int i = 0; i < m; i += 8) {
        const __m256 key = _mm256_loadu_ps(&cand.key[i]);
        const __m256 live = _mm256_and_ps(
            _mm256_cmp_ps(_mm256_sub_ps(key, key), _mm256_setzero_ps(), _CMP_EQ_OQ),
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(m - i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))));
        const __m256 score = kLargest ? key : _mm256_sub_ps(_mm256_setzero_ps(), key);
        _mm256_storeu_ps(&scores[i], _mm256_blendv_ps(ninf, score, live));
      }
      for (; n < k; ++n) {
        __m256 best = ninf;
        for (int i = 0; i < m; i += 8) best = _mm256_max_ps(best, _mm256_loadu_ps(&scores[i]));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(best), _mm256_extractf128_ps(best, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float top = _mm_cvtss_f32(h);
        if (!(top > -std::numeric_limits<float>::infinity())) break;
        const __m256 vtop = _mm256_set1_ps(top);
        int i = 0;
        unsigned hit = 0;
        for (; i < m; i += 8) {
          hit = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(&scores[i]), vtop, _CMP_EQ_OQ)));
          if (hit) break;
        }
        const int at = i + __builtin_ctz(hit);
        out[n] = at;
        scores[at] = -std::numeric_limits<float>::infinity();
      }
      return n;
    }
#endif
    for (int i = 0; i < cand.size(); ++i) {
      const A key = cand.key[i];
      if (!(key - key == A(0))) continue;  // NaN or infinite: never prunes
      auto better = [&](int j) { return kLargest ? key > cand.key[j] : key < cand.key[j]; };
      if (n == k && !better(out[n - 1])) continue;
      int pos = n < k ? n++ : k - 1;
      for (; pos > 0 && better(out[pos - 1]); --pos) out[pos] = out[pos - 1];
      out[pos] = i;
    }
    return n;
  }

  // For every candidate, how many of the champions (indices ch[0, nc)) are
  // above it at all 4 corners by more than the rounding margin
  // (below_in_cell(candidate, champion)), or, kBelow, below it. A candidate
  // never counts against itself (its differences are 0).
  template <bool kBelow>
  void count_beaten(const Candidates<A>& cd, const int* ch, int nc) {
    const int n = cd.size();
    beaten.assign(n, 0);
    for (int j = 0; j < nc; ++j) {
      const int y = ch[j];
      int i = 0;
#ifdef CN_HAVE_VEC8
      if constexpr (std::is_same_v<A, float>) {
        const __m256 ya = _mm256_set1_ps(cd.abs[y]);
        const __m256 y0 = _mm256_set1_ps(cd.v0[y]), y1 = _mm256_set1_ps(cd.v1[y]),
                     y2 = _mm256_set1_ps(cd.v2[y]), y3 = _mm256_set1_ps(cd.v3[y]);
        for (; i + 8 <= n; i += 8) {
          const __m256 m = margin8(_mm256_loadu_ps(&cd.abs[i]), ya);
          auto apart = [&](__m256 yq, const float* xq) {
            const __m256 x = _mm256_loadu_ps(xq);
            return _mm256_cmp_ps(kBelow ? _mm256_sub_ps(x, yq) : _mm256_sub_ps(yq, x), m, _CMP_GT_OQ);
          };
          const __m256 all4 = _mm256_and_ps(_mm256_and_ps(apart(y0, &cd.v0[i]), apart(y1, &cd.v1[i])),
                                            _mm256_and_ps(apart(y2, &cd.v2[i]), apart(y3, &cd.v3[i])));
          __m256i* b = reinterpret_cast<__m256i*>(&beaten[i]);
          _mm256_storeu_si256(b, _mm256_sub_epi32(_mm256_loadu_si256(b), _mm256_castps_si256(all4)));
        }
      }
#endif
      const CellCorners<A> yc = cd.corners(y);
      for (; i < n; ++i) {
        const CellCorners<A> xc = cd.corners(i);
        beaten[i] += kBelow ? below_in_cell(yc, xc) : below_in_cell(xc, yc);
      }
    }
  }

  // Survivors (smax, smin) of the cell whose corners (per class) are ca, cb,
  // cc, cd: every class, or those that the interval and champion tests
  // (upsample_dominance_element.h) cannot skip, in class order.
  void prune_cell(const A* ca, const A* cb, const A* cc, const A* cd, bool prune) {
    const int32_t offset = static_cast<int32_t>(a.class_offset);
    smax.clear();
    smin.clear();
    if (!prune) {
      for (int64_t c = 0; c < a.C; ++c) smax.push(offset + static_cast<int32_t>(c), ca[c], cb[c], cc[c], cd[c]);
      if (kWeakest) smin = smax;
      return;
    }
    A tmax, tmin;
    thresholds(ca, cb, cc, cd, tmax, tmin);
    candidates(ca, cb, cc, cd, tmax, tmin);
    int champ[kMaxChampions];
    select_survivors<false, kRunnerUp ? 2 : 1>(cmax, champ, champions<true>(cmax, kMaxChampions, champ), smax);
    if constexpr (kWeakest)
      select_survivors<true, 1>(cmin, champ, champions<false>(cmin, kMinChampions, champ), smin);
  }

  // The candidates that fewer than kNeed of the champions (ch[0, nc)) beat
  // everywhere in the cell (count_beaten), appended to `out` in class order.
  template <bool kBelow, int kNeed>
  void select_survivors(const Candidates<A>& cd, const int* ch, int nc, Survivors<A>& out) {
    const int32_t offset = static_cast<int32_t>(a.class_offset);
    const int n = cd.size();
    int i = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      // 8 candidates at a time against every champion (count8); the last
      // vector's lanes past n are masked off.
      const __m256i vneed = _mm256_set1_epi32(kNeed), voff = _mm256_set1_epi32(offset);
      for (; i < n; i += 8) {
        __m256 x0, x1, x2, x3;
        const __m256i count = count8<kBelow, 16>(cd, i, ch, nc, x0, x1, x2, x3);
        unsigned keep = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vneed, count))));
        if (n - i < 8) keep &= (1u << (n - i)) - 1;
        if (keep == 0) continue;
        const __m256i perm = avx2::compress_lanes(keep);
        const int64_t k = out.n;
        pack_store(&out.cls[k], _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(&cd.c[i])), voff), perm);
        pack_store(&out.a[k], x0, perm), pack_store(&out.b[k], x1, perm);
        pack_store(&out.c[k], x2, perm), pack_store(&out.d[k], x3, perm);
        out.n = k + __builtin_popcount(keep);
      }
      return;
    }
#endif
    count_beaten<kBelow>(cd, ch, nc);
    for (; i < n; ++i)
      if (beaten[i] < kNeed) out.push(offset + cd.c[i], cd.v0[i], cd.v1[i], cd.v2[i], cd.v3[i]);
  }

#ifdef CN_HAVE_VEC8
  // For candidates [i, i + 8): how many of the champions ch[0, nc) are above
  // them (kBelow: below) at all 4 corners by more than the margin
  // (count_beaten's test, margin kEps ulps); their corners in x0..x3.
  template <bool kBelow, int kEps>
  static CN_INLINE __m256i count8(const Candidates<float>& cd, int i, const int* ch, int nc, __m256& x0,
                                  __m256& x1, __m256& x2, __m256& x3) {
    x0 = _mm256_loadu_ps(&cd.v0[i]), x1 = _mm256_loadu_ps(&cd.v1[i]);
    x2 = _mm256_loadu_ps(&cd.v2[i]), x3 = _mm256_loadu_ps(&cd.v3[i]);
    const __m256 xa = _mm256_loadu_ps(&cd.abs[i]);
    __m256i count = _mm256_setzero_si256();
    for (int j = 0; j < nc; ++j) {
      const int y = ch[j];
      const __m256 m = margin8<kEps>(xa, _mm256_set1_ps(cd.abs[y]));
      auto apart = [&](float yq, __m256 x) {
        const __m256 vy = _mm256_set1_ps(yq);
        return _mm256_cmp_ps(kBelow ? _mm256_sub_ps(x, vy) : _mm256_sub_ps(vy, x), m, _CMP_GT_OQ);
      };
      const __m256 all4 = _mm256_and_ps(_mm256_and_ps(apart(cd.v0[y], x0), apart(cd.v1[y], x1)),
                                        _mm256_and_ps(apart(cd.v2[y], x2), apart(cd.v3[y], x3)));
      count = _mm256_sub_epi32(count, _mm256_castps_si256(all4));
    }
    return count;
  }

  // Sub-blocks of a cell's output (kSubRows rows x 16 columns): the cell's
  // survivors pruned again against their values at the block's 4 corner pixels.
  // Within a cell the bilinear weights grow monotonically with the pixel, so
  // a class's value at an inner pixel is a convex combination of its values
  // at the block's corners, up to rounding: the cells' tests apply, with the
  // corner pixels' computed values (the evaluation's own arithmetic) as
  // corners and a wider margin (kSubEps ulps of the cells' largest |corner|,
  // against 16 for cells) for the rounding of both the corners and the inner
  // pixels. A block needs kSubMinPixels pixels and the cell kSubMinSurvivors
  // survivors to pay for its pruning.
  static constexpr int64_t kSubRows = 32;
  static constexpr int kSubEps = 64;
  static constexpr int kSubChampions = 4;
  static constexpr int64_t kSubMinSurvivors = 6, kSubMinPixels = 128;
  Candidates<float> sub;
  std::vector<int32_t> ident, selmax, selmin;
  std::vector<float> sabs;  // the survivors' largest |corner| (max list, then min list)

  // Positions (into the list) of the candidates of `sub` that fewer than kNeed
  // champions beat everywhere, packed into out; returns their count.
  template <bool kBelow, int kNeed>
  static int select_positions(const Candidates<float>& cd, const int* ch, int nc, int32_t* out) {
    const __m256i vneed = _mm256_set1_epi32(kNeed);
    int k = 0;
    for (int i = 0; i < cd.n; i += 8) {
      __m256 x0, x1, x2, x3;
      const __m256i count = count8<kBelow, kSubEps>(cd, i, ch, nc, x0, x1, x2, x3);
      unsigned keep = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vneed, count))));
      if (cd.n - i < 8) keep &= (1u << (cd.n - i)) - 1;
      pack_store(out + k, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&cd.c[i])),
                 avx2::compress_lanes(keep));
      k += __builtin_popcount(keep);
    }
    return k;
  }

  // The sub-block's corner values of the ns survivors whose horizontal
  // interpolations (r0, r1 rows) start at r, as candidates (positions k).
  void sub_corners(const float* r, int64_t ns, const float* abs, int64_t lenp, int64_t pa, int64_t pe,
                   float la0, float la1, float lb0, float lb1) {
    sub.clear();
    for (int64_t k = 0; k < ns; ++k) {
      const float* r0 = r + 2 * k * lenp;
      const float* r1 = r0 + lenp;
      sub.push(static_cast<int32_t>(k), r0[pa] * la0 + r1[pa] * la1, r0[pe] * la0 + r1[pe] * la1,
               r0[pa] * lb0 + r1[pa] * lb1, r0[pe] * lb0 + r1[pe] * lb1, abs[k]);
    }
  }

  // Survivors of output rows [y0, y1), columns [pa, pe] of the chunk:
  // positions into smax (selmax, nx) and smin (selmin, nn).
  void sub_prune(int64_t y0, int64_t y1, int64_t pa, int64_t pe, int64_t lenp, const float* rmax,
                 const float* rmin, int64_t& nx, int64_t& nn) {
    const float la0 = row_l0[y0], la1 = row_l1[y0], lb0 = row_l0[y1 - 1], lb1 = row_l1[y1 - 1];
    int champ[kSubChampions];
    sub_corners(rmax, smax.size(), sabs.data(), lenp, pa, pe, la0, la1, lb0, lb1);
    nx = select_positions<false, kRunnerUp ? 2 : 1>(sub, champ, champions<true>(sub, kSubChampions, champ),
                                                     selmax.data());
    if constexpr (kWeakest) {
      sub_corners(rmin, smin.size(), sabs.data() + smax.size(), lenp, pa, pe, la0, la1, lb0, lb1);
      nn = select_positions<true, 1>(sub, champ, champions<false>(sub, kSubChampions, champ), selmin.data());
    }
  }
#endif

  // Horizontal interpolation of one class over the chunk's columns.
  void interp_row(A va, A vb, A vc, A vd, int64_t lenp, A* r0, A* r1) const {
    for (int64_t p = 0; p < lenp; ++p) {
      r0[p] = va * w0l[p] + vb * w1l[p];
      r1[p] = vc * w0l[p] + vd * w1l[p];
    }
  }

  // The survivors (and the target class tc of the chunk, or -1) over output
  // rows [y_begin, y_end) and columns [x0, x1) of image n: kColChunk columns
  // at a time, each survivor's horizontal interpolation computed once for all
  // rows; then every row is r0 * l0 + r1 * l1 per survivor, which is bilerp()
  // (and the dense rows' h0 * l0 + h1 * l1) operation for operation.
  void eval_cell(int64_t n, int64_t y_begin, int64_t y_end, int64_t x0, int64_t x1, int64_t tc,
                 const A* ca, const A* cb, const A* cc, const A* cd) {
    const int64_t nmax = smax.size(), nmin = kWeakest ? smin.size() : 0;
    const int64_t nrows = nmax + nmin + (tc >= 0 ? 1 : 0);
    for (int64_t xa = x0; xa < x1; xa += kColChunk) {
      const int64_t len = std::min(kColChunk, x1 - xa), lenp = (len + 7) / 8 * 8;
      for (int64_t p = 0; p < lenp; ++p) {
        w0l[p] = p < len ? col_w0[xa + p] : A(0);
        w1l[p] = p < len ? col_w1[xa + p] : A(0);
      }
      if (static_cast<int64_t>(rbuf.size()) < 2 * nrows * lenp) rbuf.resize(2 * nrows * lenp);
      A* r = rbuf.data();
      for (int64_t k = 0; k < nmax; ++k, r += 2 * lenp)
        interp_row(smax.a[k], smax.b[k], smax.c[k], smax.d[k], lenp, r, r + lenp);
      for (int64_t k = 0; k < nmin; ++k, r += 2 * lenp)
        interp_row(smin.a[k], smin.b[k], smin.c[k], smin.d[k], lenp, r, r + lenp);
      if (tc >= 0) interp_row(ca[tc], cb[tc], cc[tc], cd[tc], lenp, r, r + lenp);
      const A* rmax = rbuf.data();
      const A* rmin = rmax + 2 * nmax * lenp;
      const A* rt = tc >= 0 ? rmin + 2 * nmin * lenp : nullptr;
#ifdef CN_HAVE_VEC8
      if constexpr (std::is_same_v<A, float>) {
        // Blocks of kSubRows rows x 16 columns, their survivors pruned again
        // (sub_prune) where the cell has enough of them and the block enough pixels.
        const bool sub_blocks = nmax + nmin >= kSubMinSurvivors &&
                                std::min<int64_t>(y_end - y_begin, kSubRows) * std::min<int64_t>(len, 16) >= kSubMinPixels;
        if (sub_blocks) {
          for (int64_t k = 0; k < nmax; ++k) sabs[k] = corners_of(smax.a[k], smax.b[k], smax.c[k], smax.d[k]).abs();
          for (int64_t k = 0; k < nmin; ++k)
            sabs[nmax + k] = corners_of(smin.a[k], smin.b[k], smin.c[k], smin.d[k]).abs();
        }
        for (int64_t yb = y_begin; yb < y_end; yb += kSubRows) {
          const int64_t ye = std::min(yb + kSubRows, y_end);
          int64_t p = 0;
          for (; p + 16 <= lenp; p += 16) {
            const int32_t *kx = ident.data(), *kn = ident.data();
            int64_t nx = nmax, nn = nmin;
            if (sub_blocks) {
              sub_prune(yb, ye, p, std::min<int64_t>(p + 16, len) - 1, lenp, rmax, rmin, nx, nn);
              kx = selmax.data(), kn = selmin.data();
            }
            for (int64_t y = yb; y < ye; ++y) {
              const int64_t o = (n * a.H + y) * a.W + xa;
#ifdef CN_HAVE_VEC16
              if (stream16 && p + 16 <= len && (o + p) % 16 == 0) {
                eval_vec16(o, p, lenp, row_l0[y], row_l1[y], rmax, rmin, rt, kx, nx, kn, nn);
                continue;
              }
#endif
              eval_vecs<2>(o, p, len, lenp, row_l0[y], row_l1[y], rmax, rmin, rt, kx, nx, kn, nn);
            }
          }
          for (; p + 8 <= lenp; p += 8)
            for (int64_t y = yb; y < ye; ++y)
              eval_vecs<1>((n * a.H + y) * a.W + xa, p, len, lenp, row_l0[y], row_l1[y], rmax, rmin, rt,
                           ident.data(), nmax, ident.data(), nmin);
        }
        continue;
      }
#endif
      for (int64_t y = y_begin; y < y_end; ++y) {
        const int64_t o = (n * a.H + y) * a.W + xa;
        const A l0 = row_l0[y], l1 = row_l1[y];
        for (int64_t p = 0; p < len; ++p) eval_pixel(o, p, lenp, l0, l1, rmax, rmin, rt);
      }
    }
  }

#ifdef CN_HAVE_VEC16
  // eval_vecs<2> in 16-lane registers (AVX-512): output pixels [p, p + 16)
  // of the chunk, all inside it, streamed out whole (stream16, o + p a
  // multiple of 16). The same operations per lane, so the same bits.
  CN_INLINE void eval_vec16(int64_t o, int64_t p, int64_t lenp, float l0, float l1, const float* rmax,
                            const float* rmin, const float* rt, const int32_t* kmax, int64_t nmax,
                            const int32_t* kmin, int64_t nmin) {
    using avx512::Vec16f;
    using avx512::Vec16i;
    using avx512::load16;
    using avx512::set1;
    Vec16f v1, v2, vm;
    Vec16i i1, i2, im;
    if (sv == nullptr) {
      v1 = v2 = set1(empty_value<kOrdered, true, float>());
      vm = set1(empty_value<kOrdered, false, float>());
      i1 = i2 = im = set1(kNoClass);
    } else {
      alignas(64) float t1[16], t2[16], tm[16];
      alignas(64) int32_t u1[16], u2[16], um[16];
      for (int l = 0; l < 16; ++l)
        load_slots<kOrdered>(sv, a.state_indices, plane, o + p + l, t1[l], u1[l], t2[l], u2[l], tm[l], um[l]);
      v1 = load16(t1), v2 = load16(t2), vm = load16(tm);
      i1 = load16(u1), i2 = load16(u2), im = load16(um);
    }
    const Vec16f vl0 = set1(l0), vl1 = set1(l1);
    auto value = [&](const float* rk) { return load16(rk + p) * vl0 + load16(rk + lenp + p) * vl1; };
    int64_t k = 0;
    // Without a state, the first two survivors fill the slots (unless NaN).
    if (kOrdered && sv == nullptr && nmax >= 2) {
      const Vec16f x0 = value(rmax + 2 * kmax[0] * lenp);
      if (!any_nan(x0)) {
        dominance_first2<kRunnerUp, false>(v1, i1, v2, i2, vm, im, x0, set1(smax.cls[kmax[0]]),
                                           value(rmax + 2 * kmax[1] * lenp), set1(smax.cls[kmax[1]]));
        k = 2;
      }
    }
    for (const int64_t k0 = sv == nullptr ? std::min<int64_t>(2, nmax) : 0; k < k0; ++k)
      dominance_update<kOrdered, kRunnerUp, false>(v1, i1, v2, i2, vm, im, value(rmax + 2 * kmax[k] * lenp),
                                                   set1(smax.cls[kmax[k]]));
    if (kOrdered && !any_nan(kRunnerUp ? v2 : v1)) {
      for (; k < nmax; ++k)
        dominance_update_filled<kRunnerUp, false>(v1, i1, v2, i2, vm, im, value(rmax + 2 * kmax[k] * lenp),
                                                  set1(smax.cls[kmax[k]]));
    } else {
      for (; k < nmax; ++k)
        dominance_update<kOrdered, kRunnerUp, false>(v1, i1, v2, i2, vm, im, value(rmax + 2 * kmax[k] * lenp),
                                                     set1(smax.cls[kmax[k]]));
    }
    if constexpr (kWeakest) {
      k = 0;
      if (kOrdered && sv == nullptr && nmin >= 1) {
        // The first survivor fills the empty slot (a NaN value leaves it empty).
        vm = value(rmin + 2 * kmin[0] * lenp), im = set1(smin.cls[kmin[0]]);
        k = 1;
      }
      if (kOrdered && !any_nan(vm)) {
        for (; k < nmin; ++k) min_update_filled(vm, im, value(rmin + 2 * kmin[k] * lenp), set1(smin.cls[kmin[k]]));
      } else {
        for (; k < nmin; ++k)
          min_update<Vec16f, kOrdered>(vm, im, value(rmin + 2 * kmin[k] * lenp), set1(smin.cls[kmin[k]]));
      }
    }
    int64_t* oi = a.out_indices;
    avx512::stream_slot16<kOrdered>(v1, i1, ov + kTop1Value * plane + o + p, oi + kTop1Index * plane + o + p);
    avx512::stream_slot16<kOrdered>(v2, i2, ov + kTop2Value * plane + o + p, oi + kTop2Index * plane + o + p);
    avx512::stream_slot16<kOrdered>(vm, im, ov + kMinValue * plane + o + p, oi + kMinIndex * plane + o + p);
    float* tv = ov + kTargetValue * plane + o + p;
    _mm512_stream_ps(tv, rt != nullptr ? value(rt).v
                         : sv != nullptr ? _mm512_loadu_ps(sv + kTargetValue * plane + o + p)
                                         : _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  }
#endif

  // One output pixel (column p of the chunk at output index o).
  void eval_pixel(int64_t o, int64_t p, int64_t lenp, A l0, A l1, const A* rmax, const A* rmin,
                  const A* rt) {
    A v1, v2, vm;
    int32_t i1, i2, im;
    load_slots<kOrdered>(sv, a.state_indices, plane, o + p, v1, i1, v2, i2, vm, im);
    const int64_t nmax = smax.size();
    int64_t k = 0;
    // Without a state, the first two survivors fill the slots (unless NaN).
    for (const int64_t k0 = sv == nullptr ? std::min<int64_t>(2, nmax) : 0; k < k0; ++k)
      dominance_update<kOrdered, kRunnerUp, false>(v1, i1, v2, i2, vm, im,
                                                   rmax[2 * k * lenp + p] * l0 + rmax[(2 * k + 1) * lenp + p] * l1,
                                                   smax.cls[k]);
    const A last = kRunnerUp ? v2 : v1;
    if (kOrdered && last == last) {
      for (; k < nmax; ++k)
        dominance_update_filled<kRunnerUp, false>(v1, i1, v2, i2, vm, im,
                                                  rmax[2 * k * lenp + p] * l0 + rmax[(2 * k + 1) * lenp + p] * l1,
                                                  smax.cls[k]);
    } else {
      for (; k < nmax; ++k)
        dominance_update<kOrdered, kRunnerUp, false>(v1, i1, v2, i2, vm, im,
                                                     rmax[2 * k * lenp + p] * l0 + rmax[(2 * k + 1) * lenp + p] * l1,
                                                     smax.cls[k]);
    }
    if constexpr (kWeakest) {
      const int64_t nmin = smin.size();
      k = 0;
      for (const int64_t k0 = sv == nullptr ? std::min<int64_t>(1, nmin) : 0; k < k0; ++k)
        min_update<A, kOrdered>(vm, im, rmin[2 * k * lenp + p] * l0 + rmin[(2 * k + 1) * lenp + p] * l1,
                                smin.cls[k]);
      if (kOrdered && vm == vm) {
        for (; k < nmin; ++k)
          min_update_filled(vm, im, rmin[2 * k * lenp + p] * l0 + rmin[(2 * k + 1) * lenp + p] * l1,
                            smin.cls[k]);
      } else {
        for (; k < nmin; ++k)
          min_update<A, kOrdered>(vm, im, rmin[2 * k * lenp + p] * l0 + rmin[(2 * k + 1) * lenp + p] * l1,
                                  smin.cls[k]);
      }
    }
    store_slots<kOrdered>(ov, a.out_indices, plane, o + p, v1, i1, v2, i2, vm, im);
    A* tv = ov + kTargetValue * plane + o + p;
    if (rt != nullptr) *tv = rt[p] * l0 + rt[lenp + p] * l1;
    else *tv = sv != nullptr ? sv[kTargetValue * plane + o + p] : std::numeric_limits<A>::quiet_NaN();
  }

#ifdef CN_HAVE_VEC8
  // kV x 8 output pixels (columns [p, p + 8 kV) of the chunk; only those
  // below len are stored), float: eval_pixel in registers.
  template <int kV>
  CN_INLINE void eval_vecs(int64_t o, int64_t p, int64_t len, int64_t lenp, float l0, float l1,
                           const float* rmax, const float* rmin, const float* rt, const int32_t* kmax,
                           int64_t nmax, const int32_t* kmin, int64_t nmin) {
    using namespace avx2;
    Vec8f v1[kV], v2[kV], vm[kV];
    Vec8i i1[kV], i2[kV], im[kV];
    const Vec8f vl0 = set1(l0), vl1 = set1(l1);
    if (sv == nullptr) {
      for (int q = 0; q < kV; ++q) {
        v1[q] = v2[q] = set1(empty_value<kOrdered, true, float>());
        vm[q] = set1(empty_value<kOrdered, false, float>());
        i1[q] = i2[q] = im[q] = set1(kNoClass);
      }
    } else {
      alignas(32) float t1[8 * kV], t2[8 * kV], tm[8 * kV];
      alignas(32) int32_t u1[8 * kV], u2[8 * kV], um[8 * kV];
      for (int l = 0; l < 8 * kV; ++l) {
        if (p + l < len) load_slots<kOrdered>(sv, a.state_indices, plane, o + p + l, t1[l], u1[l], t2[l], u2[l], tm[l], um[l]);
        else load_slots<kOrdered, float>(nullptr, nullptr, 0, 0, t1[l], u1[l], t2[l], u2[l], tm[l], um[l]);
      }
      for (int q = 0; q < kV; ++q) {
        v1[q] = load8(t1 + 8 * q), v2[q] = load8(t2 + 8 * q), vm[q] = load8(tm + 8 * q);
        i1[q] = load8(u1 + 8 * q), i2[q] = load8(u2 + 8 * q), im[q] = load8(um + 8 * q);
      }
    }
    auto value = [&](const float* rk, int q) {
      return load8(rk + p + 8 * q) * vl0 + load8(rk + lenp + p + 8 * q) * vl1;
    };
    int64_t k = 0;
    // Without a state, the first two survivors fill the slots (unless NaN).
    if (kOrdered && sv == nullptr && nmax >= 2) {
      Vec8f x0[kV];
      bool nan = false;
      for (int q = 0; q < kV; ++q) x0[q] = value(rmax + 2 * kmax[0] * lenp, q), nan = nan || any_nan(x0[q]);
      if (!nan) {
        const Vec8i c0 = set1(smax.cls[kmax[0]]), c1 = set1(smax.cls[kmax[1]]);
        for (int q = 0; q < kV; ++q)
          dominance_first2<kRunnerUp, false>(v1[q], i1[q], v2[q], i2[q], vm[q], im[q], x0[q], c0,
                                             value(rmax + 2 * kmax[1] * lenp, q), c1);
        k = 2;
      }
    }
    for (const int64_t k0 = sv == nullptr ? std::min<int64_t>(2, nmax) : 0; k < k0; ++k) {
      const Vec8i c = set1(smax.cls[kmax[k]]);
      for (int q = 0; q < kV; ++q)
        dominance_update<kOrdered, kRunnerUp, false>(v1[q], i1[q], v2[q], i2[q], vm[q], im[q],
                                                     value(rmax + 2 * kmax[k] * lenp, q), c);
    }
    bool filled = kOrdered;
    for (int q = 0; q < kV; ++q) filled = filled && !any_nan(kRunnerUp ? v2[q] : v1[q]);
    if (filled) {
      for (; k < nmax; ++k) {
        const Vec8i c = set1(smax.cls[kmax[k]]);
        for (int q = 0; q < kV; ++q)
          dominance_update_filled<kRunnerUp, false>(v1[q], i1[q], v2[q], i2[q], vm[q], im[q],
                                                    value(rmax + 2 * kmax[k] * lenp, q), c);
      }
    } else {
      for (; k < nmax; ++k) {
        const Vec8i c = set1(smax.cls[kmax[k]]);
        for (int q = 0; q < kV; ++q)
          dominance_update<kOrdered, kRunnerUp, false>(v1[q], i1[q], v2[q], i2[q], vm[q], im[q],
                                                       value(rmax + 2 * kmax[k] * lenp, q), c);
      }
    }
    if constexpr (kWeakest) {
      k = 0;
      if (kOrdered && sv == nullptr && nmin >= 1) {
        // The first survivor fills the empty slot (a NaN value leaves it empty).
        for (int q = 0; q < kV; ++q) vm[q] = value(rmin + 2 * kmin[0] * lenp, q), im[q] = set1(smin.cls[kmin[0]]);
        k = 1;
      }
      bool mfilled = kOrdered;
      for (int q = 0; q < kV; ++q) mfilled = mfilled && !any_nan(vm[q]);
      if (mfilled) {
        for (; k < nmin; ++k) {
          const Vec8i c = set1(smin.cls[kmin[k]]);
          for (int q = 0; q < kV; ++q) min_update_filled(vm[q], im[q], value(rmin + 2 * kmin[k] * lenp, q), c);
        }
      } else {
        for (; k < nmin; ++k) {
          const Vec8i c = set1(smin.cls[kmin[k]]);
          for (int q = 0; q < kV; ++q) min_update<Vec8f, kOrdered>(vm[q], im[q], value(rmin + 2 * kmin[k] * lenp, q), c);
        }
      }
    }
    int64_t* oi = a.out_indices;
    float* tv = ov + kTargetValue * plane + o;
    if (stream && p + 8 * kV <= len && (o + p) % 8 == 0) {  // whole vectors, plane by plane
      stream_slots8<kOrdered, kV>(v1, i1, ov + kTop1Value * plane + o + p, oi + kTop1Index * plane + o + p);
      stream_slots8<kOrdered, kV>(v2, i2, ov + kTop2Value * plane + o + p, oi + kTop2Index * plane + o + p);
      stream_slots8<kOrdered, kV>(vm, im, ov + kMinValue * plane + o + p, oi + kMinIndex * plane + o + p);
      for (int q = 0; q < kV; ++q)
        _mm256_stream_ps(tv + p + 8 * q, rt != nullptr ? value(rt, q).v
                                         : sv != nullptr ? _mm256_loadu_ps(sv + kTargetValue * plane + o + p + 8 * q)
                                                         : _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()));
      return;
    }
    for (int q = 0; q < kV; ++q) {
      const int64_t pq = p + 8 * q;
      if (pq + 8 <= len && stream && (o + pq) % 8 == 0) {
        store_slot8<kOrdered, true>(v1[q], i1[q], ov + kTop1Value * plane + o + pq, oi + kTop1Index * plane + o + pq);
        store_slot8<kOrdered, true>(v2[q], i2[q], ov + kTop2Value * plane + o + pq, oi + kTop2Index * plane + o + pq);
        store_slot8<kOrdered, true>(vm[q], im[q], ov + kMinValue * plane + o + pq, oi + kMinIndex * plane + o + pq);
        _mm256_stream_ps(tv + pq, rt != nullptr ? value(rt, q).v
                                  : sv != nullptr ? _mm256_loadu_ps(sv + kTargetValue * plane + o + pq)
                                                  : _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()));
      } else if (pq + 8 <= len) {
        store_slot8<kOrdered>(v1[q], i1[q], ov + kTop1Value * plane + o + pq, oi + kTop1Index * plane + o + pq);
        store_slot8<kOrdered>(v2[q], i2[q], ov + kTop2Value * plane + o + pq, oi + kTop2Index * plane + o + pq);
        store_slot8<kOrdered>(vm[q], im[q], ov + kMinValue * plane + o + pq, oi + kMinIndex * plane + o + pq);
        if (rt != nullptr) store8(tv + pq, value(rt, q));
        else if (sv != nullptr) std::copy(sv + kTargetValue * plane + o + pq, sv + kTargetValue * plane + o + pq + 8, tv + pq);
        else store8(tv + pq, set1(std::numeric_limits<float>::quiet_NaN()));
      } else {
        alignas(32) float t1[8], t2[8], tm[8], tt[8];
        alignas(32) int32_t u1[8], u2[8], um[8];
        store8(t1, v1[q]), store8(t2, v2[q]), store8(tm, vm[q]);
        store8(u1, i1[q]), store8(u2, i2[q]), store8(um, im[q]);
        if (rt != nullptr) store8(tt, value(rt, q));
        for (int l = 0; l < 8 && pq + l < len; ++l) {
          store_slots<kOrdered>(ov, oi, plane, o + pq + l, t1[l], u1[l], t2[l], u2[l], tm[l], um[l]);
          tv[pq + l] = rt != nullptr ? tt[l]
                       : sv != nullptr ? sv[kTargetValue * plane + o + pq + l]
                                       : std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  }
#endif

  // Target plane for output pixels [o, o + len) of row y, columns [x0, x1).
  void target_row(int64_t n, int64_t y, int64_t x0, int64_t x1, int64_t o) {
    A* tv = ov + kTargetValue * plane + o;
    const int64_t len = x1 - x0;
    const int64_t tc = a.target != nullptr ? a.target[n] - a.class_offset : -1;
    if (tc >= 0 && tc < a.C) {
      const A* m = maps + n * a.stride_n + tc * a.stride_c;
      const int64_t sw = a.stride_w;
      if (a.mode == InterpMode::kNearest) {
        const A* r = m + a.row0[y] * a.stride_h;
        for (int64_t p = 0; p < len; ++p) tv[p] = r[a.col0[x0 + p] * sw];
      } else {
        const A* r0 = m + a.row0[y] * a.stride_h;
        const A* r1 = m + a.row1[y] * a.stride_h;
        const A l0 = row_l0[y], l1 = row_l1[y];
        for (int64_t p = 0; p < len; ++p) {
          const int64_t x = x0 + p;
          tv[p] = bilerp(r0[a.col0[x] * sw], r0[a.col1[x] * sw], r1[a.col0[x] * sw], r1[a.col1[x] * sw],
                         col_w0[x], col_w1[x], l0, l1);
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
    const int64_t hw = a.stride_c, k = i * a.stride_h + j * a.stride_w;
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
    const A* m = maps + n * a.stride_n + i * a.stride_h;
    const int64_t sw = a.stride_w;
    for (int64_t c = 0; c < a.C; ++c) {
      const A* r = m + c * a.stride_c;
      A* o = out + c * Wp;
      for (int64_t x = 0; x < a.W; ++x) o[x] = r[a.col0[x] * sw] * col_w0[x] + r[a.col1[x] * sw] * col_w1[x];
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
    const A* m = maps + n * a.stride_n;
    const int64_t i0 = a.row0[y_begin], i1 = a.row1[y_begin];
    const bool bilinear = a.mode == InterpMode::kBilinear;
    if (bilinear) corner_rows(n, i0, i1);
    const int64_t t = a.target != nullptr ? a.target[n] - a.class_offset : -1;
    const int64_t tc = t >= 0 && t < a.C ? t : -1;
    for (int64_t cb = 0; cb < a.num_col_blocks; ++cb) {
      const int64_t x0 = a.col_block_start[cb], x1 = a.col_block_start[cb + 1];
      const int64_t j0 = a.col0[x0], j1 = a.col1[x0];
      if (bilinear) {
        // Pruning pays when the cell has enough pixels to amortise it.
        const bool prune = a.prune != 0 && (y_end - y_begin) * (x1 - x0) >= 4 && a.C > 2;
        const A *ca = rows[0] + j0 * rs, *cb = rows[0] + j1 * rs;
        const A *cc = rows[1] + j0 * rs, *cd = rows[1] + j1 * rs;
        prune_cell(ca, cb, cc, cd, prune);
        eval_cell(n, y_begin, y_end, x0, x1, tc, ca, cb, cc, cd);
        continue;
      }
      for (int64_t y = y_begin; y < y_end; ++y) {
        const int64_t o = (n * a.H + y) * a.W + x0;
        load(o, x1 - x0);
        nearest_cell(m, i0, j0, x0, x1);
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
#ifdef CN_HAVE_VEC8
    if (worker.stream) _mm_sfence();  // the streamed output, before the threads join
#endif
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
