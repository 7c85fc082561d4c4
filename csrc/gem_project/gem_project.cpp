// l2kd::gem_project: GEM's gradient projection (schema, input checks, CPU kernel).
//
// out = g + G^T v*,  v* = argmin_{v >= margin} 1/2 v^T (G G^T + eps I) v + (G g)^T v,
// or a copy of g when every (G g)_i >= 0. See gem_project_math.h for the solve and
// l2kd/ops/gem_project.py for the derivation from the original's quadprog call.
//
// CPU: pass 0 is the check. fp32: G g in fp32 FMA chains at BLAS speed with a rigorous
// rounding bound (f32_dot_sign in gem_project_math.h); only when a dot is within its bound
// of 0 (or not finite) does the exact fp64 pass (G g and g.g) decide. Either way the
// decision is the fp64 check's and independent of the thread count. With nothing violated,
// g is returned unchanged: the common case, as cheap as the original's torch.mm check. Otherwise pass 1 reads G and g once and forms the packed upper triangle of the augmented Gram
// [G; g][G; g]^T in fp64 (the product of two fp32 values is exact in fp64), over fixed-size
// column blocks whose partials are summed in block order, so the result does not depend on
// the thread count. The small t x t solve runs on one thread. Pass 2 reads G and g once more
// and writes out = g + G^T v in fp64, rounded to grad's dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(L2KD_AVX2) && L2KD_AVX2
#include <immintrin.h>
#endif

#include "common/cpu_memory.h"
#include "gem_project/gem_project_math.h"

namespace l2kd {
namespace gem {

void check_inputs(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps) {
  TORCH_CHECK(grad.dim() == 1, "gem_project: grad must be a flat 1-D tensor [P], got shape ", grad.sizes());
  TORCH_CHECK(memory_grads.dim() == 2, "gem_project: memory_grads must be 2-D [t, P], got shape ",
              memory_grads.sizes());
  TORCH_CHECK(memory_grads.size(1) == grad.size(0), "gem_project: memory_grads.size(1) (",
              memory_grads.size(1), ") must equal grad.size(0) (", grad.size(0), ")");
  TORCH_CHECK(memory_grads.size(0) <= kMaxT, "gem_project: at most ", kMaxT,
              " memories are supported, got memory_grads.size(0) = ", memory_grads.size(0));
  TORCH_CHECK(grad.device() == memory_grads.device(), "gem_project: grad (", grad.device(),
              ") and memory_grads (", memory_grads.device(), ") must be on the same device");
  TORCH_CHECK(grad.scalar_type() == memory_grads.scalar_type(), "gem_project: grad (", grad.scalar_type(),
              ") and memory_grads (", memory_grads.scalar_type(), ") must have the same dtype");
  const auto st = grad.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              "gem_project: grad must be float32, float16, bfloat16 or float64, got ", st);
  TORCH_CHECK(std::isfinite(margin), "gem_project: margin must be finite, got ", margin);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "gem_project: eps must be finite and >= 0, got ", eps);
}

void check_out(const at::Tensor& grad, const at::Tensor& memory_grads, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 1 && out.size(0) == grad.size(0), "gem_project: out must have shape [", grad.size(0),
              "], got ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), "gem_project: out must be contiguous");
  TORCH_CHECK(out.scalar_type() == grad.scalar_type(), "gem_project: out (", out.scalar_type(),
              ") must have grad's dtype (", grad.scalar_type(), ")");
  TORCH_CHECK(out.device() == grad.device(), "gem_project: out (", out.device(), ") must be on grad's device (",
              grad.device(), ")");
  const auto with_grad = at::get_overlap_status(out, grad);
  TORCH_CHECK(with_grad == at::MemOverlapStatus::No || with_grad == at::MemOverlapStatus::Full,
              "gem_project: out must be grad itself or not overlap it");
  TORCH_CHECK(at::get_overlap_status(out, memory_grads) == at::MemOverlapStatus::No,
              "gem_project: out must not overlap memory_grads");
}

// Turn a non-success status of the small step into an error; returns true when out must be
// g + G^T v (false: out is a copy of g).
bool handle_status(int status, double eps) {
  TORCH_CHECK(status != kStatusMemoryNonFinite,
              "gem_project: memory_grads contains non-finite values (inf or nan)");
  TORCH_CHECK(status != kStatusSolveFailed, "gem_project: the dual QP matrix G G^T + eps*I is not positive ",
              "definite (eps = ", eps, "); use eps > 0 (the original uses 1e-3)");
  TORCH_CHECK(status != kStatusNoConvergence,
              "gem_project: the active-set solve did not terminate (round-off cycling); "
              "try a larger eps");
  return status == kStatusViolated;
}

namespace {

constexpr int64_t kBlock = 65536;  // columns per deterministic partial
constexpr int kNeedExact = -100;   // the fp32 check could not decide: run the exact fp64 check

template <typename T>
inline double to_d(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
inline double to_d<double>(double x) {
  return x;
}

template <typename T>
inline T from_d(double x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
inline double from_d<double>(double x) {
  return x;
}

// dst[0:m] = src[0:m] as fp64 (exact for every supported dtype).
template <typename T>
inline void convert_row(const T* src, double* dst, int64_t m) {
  for (int64_t k = 0; k < m; ++k) dst[k] = to_d(src[k]);
}
#if defined(L2KD_AVX2) && L2KD_AVX2
template <>
inline void convert_row<float>(const float* src, double* dst, int64_t m) {
  int64_t k = 0;
  for (; k + 8 <= m; k += 8) {
    _mm256_storeu_pd(dst + k, _mm256_cvtps_pd(_mm_loadu_ps(src + k)));
    _mm256_storeu_pd(dst + k + 4, _mm256_cvtps_pd(_mm_loadu_ps(src + k + 4)));
  }
  for (; k < m; ++k) dst[k] = static_cast<double>(src[k]);
}
#endif

// s = {a0.b0, a0.b1, a1.b0, a1.b1} over m8 (a multiple of 8) doubles.
inline void tile2x2(const double* a0, const double* a1, const double* b0, const double* b1, int64_t m8,
                    double* s) {
#if defined(L2KD_AVX2) && L2KD_AVX2
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd(), c10 = _mm256_setzero_pd(),
          c11 = _mm256_setzero_pd();
  __m256d d00 = _mm256_setzero_pd(), d01 = _mm256_setzero_pd(), d10 = _mm256_setzero_pd(),
          d11 = _mm256_setzero_pd();
  for (int64_t k = 0; k < m8; k += 8) {
    __m256d x0 = _mm256_loadu_pd(a0 + k), x1 = _mm256_loadu_pd(a1 + k);
    __m256d y0 = _mm256_loadu_pd(b0 + k), y1 = _mm256_loadu_pd(b1 + k);
    c00 = _mm256_fmadd_pd(x0, y0, c00);
    c01 = _mm256_fmadd_pd(x0, y1, c01);
    c10 = _mm256_fmadd_pd(x1, y0, c10);
    c11 = _mm256_fmadd_pd(x1, y1, c11);
    x0 = _mm256_loadu_pd(a0 + k + 4);
    x1 = _mm256_loadu_pd(a1 + k + 4);
    y0 = _mm256_loadu_pd(b0 + k + 4);
    y1 = _mm256_loadu_pd(b1 + k + 4);
    d00 = _mm256_fmadd_pd(x0, y0, d00);
    d01 = _mm256_fmadd_pd(x0, y1, d01);
    d10 = _mm256_fmadd_pd(x1, y0, d10);
    d11 = _mm256_fmadd_pd(x1, y1, d11);
  }
  __m256d r[4] = {_mm256_add_pd(c00, d00), _mm256_add_pd(c01, d01), _mm256_add_pd(c10, d10),
                  _mm256_add_pd(c11, d11)};
  for (int q = 0; q < 4; ++q) {
    alignas(32) double tmp[4];
    _mm256_store_pd(tmp, r[q]);
    s[q] = (tmp[0] + tmp[1]) + (tmp[2] + tmp[3]);
  }
#else
  double c00 = 0, c01 = 0, c10 = 0, c11 = 0;
  for (int64_t k = 0; k < m8; ++k) {
    c00 += a0[k] * b0[k];
    c01 += a0[k] * b1[k];
    c10 += a1[k] * b0[k];
    c11 += a1[k] * b1[k];
  }
  s[0] = c00;
  s[1] = c01;
  s[2] = c10;
  s[3] = c11;
#endif
}

// Packed augmented Gram of columns [begin, end) into out (packed_size(t + 1) doubles).
// buf: npad * C doubles, its rows >= n zero.
template <typename T>
void gram_block(const T* G, const T* g, int t, int64_t P, int64_t begin, int64_t end, double* buf, int64_t C,
                double* out) {
  const int n = t + 1;
  const int npad = n + (n & 1);
  const int np = packed_size(n);
  for (int q = 0; q < np; ++q) out[q] = 0.0;
  for (int64_t c0 = begin; c0 < end; c0 += C) {
    const int64_t m = std::min(C, end - c0);
    const int64_t m8 = (m + 7) / 8 * 8;
    for (int r = 0; r < n; ++r) {
      const T* src = (r < t ? G + static_cast<int64_t>(r) * P : g) + c0;
      double* dst = buf + r * C;
      convert_row(src, dst, m);
      for (int64_t k = m; k < m8; ++k) dst[k] = 0.0;
    }
    for (int I = 0; I < npad / 2; ++I) {
      for (int J = I; J < npad / 2; ++J) {
        double s[4];
        tile2x2(buf + (2 * I) * C, buf + (2 * I + 1) * C, buf + (2 * J) * C, buf + (2 * J + 1) * C, m8, s);
        const int i0 = 2 * I, i1 = 2 * I + 1, j0 = 2 * J, j1 = 2 * J + 1;
        if (j0 < n && i0 <= j0) out[packed_index(i0, j0, n)] += s[0];
        if (j1 < n) out[packed_index(i0, j1, n)] += s[1];
        if (j0 < n && i1 <= j0) out[packed_index(i1, j0, n)] += s[2];
        if (j1 < n && i1 < n) out[packed_index(i1, j1, n)] += s[3];
      }
    }
  }
}

template <typename T>
void gram_cpu(const T* G, const T* g, int t, int64_t P, double* gram) {
  const int n = t + 1;
  const int npad = n + (n & 1);
  const int np = packed_size(n);
  const int64_t nblocks = (P + kBlock - 1) / kBlock;
  const int64_t C = std::max<int64_t>(64, std::min<int64_t>(512, (4096 / npad) / 8 * 8));
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(nblocks, 1) * np), 0.0);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> buf(static_cast<size_t>(npad * C), 0.0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock, end = std::min(P, begin + kBlock);
      gram_block<T>(G, g, t, P, begin, end, buf.data(), C, partial.data() + b * np);
    }
  });
  for (int q = 0; q < np; ++q) gram[q] = 0.0;
  for (int64_t b = 0; b < nblocks; ++b)
    for (int q = 0; q < np; ++q) gram[q] += partial[b * np + q];
}

// sum_k a[k] * b[k] over m8 (a multiple of 8) doubles, in a fixed order.
inline double dot_d(const double* a, const double* b, int64_t m8) {
#if defined(L2KD_AVX2) && L2KD_AVX2
  __m256d c0 = _mm256_setzero_pd(), c1 = _mm256_setzero_pd();
  for (int64_t k = 0; k < m8; k += 8) {
    c0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), c0);
    c1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k + 4), _mm256_loadu_pd(b + k + 4), c1);
  }
  alignas(32) double tmp[4];
  _mm256_store_pd(tmp, _mm256_add_pd(c0, c1));
  return (tmp[0] + tmp[1]) + (tmp[2] + tmp[3]);
#else
  double c = 0.0;
  for (int64_t k = 0; k < m8; ++k) c += a[k] * b[k];
  return c;
#endif
}

// sum_k row[k] * b[k] for k < m (b already in fp64), in a fixed order.
template <typename T>
inline double dot_row(const T* row, const double* b, int64_t m, double* scratch) {
  const int64_t m8 = (m + 7) / 8 * 8;
  convert_row(row, scratch, m);
  for (int64_t k = m; k < m8; ++k) scratch[k] = 0.0;
  return dot_d(scratch, b, m8);
}
#if defined(L2KD_AVX2) && L2KD_AVX2
// fp32 rows: convert in registers (no round trip through a buffer), four FMA chains.
template <>
inline double dot_row<float>(const float* row, const double* b, int64_t m, double*) {
  __m256d c0 = _mm256_setzero_pd(), c1 = _mm256_setzero_pd(), c2 = _mm256_setzero_pd(),
          c3 = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 16 <= m; k += 16) {
    c0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(row + k)), _mm256_loadu_pd(b + k), c0);
    c1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(row + k + 4)), _mm256_loadu_pd(b + k + 4), c1);
    c2 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(row + k + 8)), _mm256_loadu_pd(b + k + 8), c2);
    c3 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(row + k + 12)), _mm256_loadu_pd(b + k + 12), c3);
  }
  alignas(32) double tmp[4];
  _mm256_store_pd(tmp, _mm256_add_pd(_mm256_add_pd(c0, c1), _mm256_add_pd(c2, c3)));
  double s = (tmp[0] + tmp[1]) + (tmp[2] + tmp[3]);
  for (; k < m; ++k) s += static_cast<double>(row[k]) * b[k];
  return s;
}
#endif

// Pass 0, the cheap check: c = G g and g.g (t + 1 values) in fp64 over deterministic blocks.
// Reads G and g once with t + 1 FMAs per column instead of the Gram's (t + 1)(t + 2) / 2, so a
// step with no violated memory costs about what the original's single G g product costs.
template <typename T>
void dots_cpu(const T* G, const T* g, int t, int64_t P, double* dots) {
  const int n = t + 1;
  const int64_t nblocks = (P + kBlock - 1) / kBlock;
  constexpr int64_t C = 2048;
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(nblocks, 1) * n), 0.0);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> gb(C), scratch(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock, end = std::min(P, begin + kBlock);
      double* out = partial.data() + b * n;
      for (int64_t c0 = begin; c0 < end; c0 += C) {
        const int64_t m = std::min(C, end - c0), m8 = (m + 7) / 8 * 8;
        convert_row(g + c0, gb.data(), m);
        for (int64_t k = m; k < m8; ++k) gb[k] = 0.0;
        out[t] += dot_d(gb.data(), gb.data(), m8);
        for (int i = 0; i < t; ++i) out[i] += dot_row(G + static_cast<int64_t>(i) * P + c0, gb.data(), m, scratch.data());
      }
    }
  });
  for (int q = 0; q < n; ++q) dots[q] = 0.0;
  for (int64_t b = 0; b < nblocks; ++b)
    for (int q = 0; q < n; ++q) dots[q] += partial[b * n + q];
}

// Status of the cheap check (kStatus* codes): nothing violated, violated (then the Gram pass
// runs), or non-finite input. A non-finite G g with a finite g.g means non-finite memories.
inline int check_dots(int t, const double* dots) {
  if (!finite(dots[t])) return kStatusGradNonFinite;
  bool violated = false;
  for (int i = 0; i < t; ++i) {
    if (!finite(dots[i])) return kStatusMemoryNonFinite;
    if (dots[i] < 0.0) violated = true;
  }
  return violated ? kStatusViolated : kStatusUnchanged;
}

#if defined(L2KD_AVX2) && L2KD_AVX2
inline float hsum8(__m256 v) {
  const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

// Pass 0 for fp32 at BLAS speed: per memory i, d_i = G_i . g and S_i = |G_i| . |g| in fp32 FMA
// chains over sub-blocks of kSub columns (128 FMAs per lane, then a horizontal sum and at most
// 7 tail terms: within kF32Chain roundings), each sub-block's fp32 partial added in fp64, over
// the same deterministic kBlock partials as the fp64 pass. Up to kRows memories are walked
// together: g's vector is loaded once for all of them and their 2 * kRows accumulator chains are
// independent, so the loop is bound by the memory streams rather than by the FMA latency of one
// chain (the order of every chain's additions is the same as one row at a time). out: t dots,
// t abs-sums, and the number of fp64-summed partials.
constexpr int kRows = 4;

template <int R>
inline void dots_f32_rows(const float* gc, const float* const* rows, int64_t m, float* ds, float* ss) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 acc[R], abs_acc[R];
  for (int r = 0; r < R; ++r) acc[r] = abs_acc[r] = _mm256_setzero_ps();
  const int64_t m8 = m / 8 * 8;
  for (int64_t k = 0; k < m8; k += 8) {
    const __m256 x = _mm256_loadu_ps(gc + k), ax = _mm256_andnot_ps(sign, x);
    for (int r = 0; r < R; ++r) {
      const __m256 y = _mm256_loadu_ps(rows[r] + k);
      acc[r] = _mm256_fmadd_ps(x, y, acc[r]);
      abs_acc[r] = _mm256_fmadd_ps(ax, _mm256_andnot_ps(sign, y), abs_acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float d = hsum8(acc[r]), s = hsum8(abs_acc[r]);
    for (int64_t k = m8; k < m; ++k) {
      d = std::fma(gc[k], rows[r][k], d);
      s = std::fma(std::fabs(gc[k]), std::fabs(rows[r][k]), s);
    }
    ds[r] = d;
    ss[r] = s;
  }
}

void dots_f32_cpu(const float* G, const float* g, int t, int64_t P, double* d, double* S, double* nparts) {
  constexpr int64_t kSub = 1024;
  static_assert(kSub / 8 + 3 + 7 + 2 <= kF32Chain, "fp32 chain longer than the error bound assumes");
  const int64_t nblocks = (P + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(nblocks, 1) * 2 * t), 0.0);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    const float* rows[kRows];
    float ds[kRows], ss[kRows];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock, end = std::min(P, begin + kBlock);
      double* out = partial.data() + b * 2 * t;
      for (int64_t c0 = begin; c0 < end; c0 += kSub) {
        const int64_t m = std::min(kSub, end - c0);
        for (int i0 = 0; i0 < t; i0 += kRows) {
          const int R = std::min(kRows, t - i0);
          for (int r = 0; r < R; ++r) rows[r] = G + static_cast<int64_t>(i0 + r) * P + c0;
          switch (R) {
            case 4: dots_f32_rows<4>(g + c0, rows, m, ds, ss); break;
            case 3: dots_f32_rows<3>(g + c0, rows, m, ds, ss); break;
            case 2: dots_f32_rows<2>(g + c0, rows, m, ds, ss); break;
            default: dots_f32_rows<1>(g + c0, rows, m, ds, ss); break;
          }
          for (int r = 0; r < R; ++r) {
            out[i0 + r] += static_cast<double>(ds[r]);
            out[t + i0 + r] += static_cast<double>(ss[r]);
          }
        }
      }
    }
  });
  for (int i = 0; i < 2 * t; ++i) (i < t ? d[i] : S[i - t]) = 0.0;
  for (int64_t b = 0; b < nblocks; ++b)
    for (int i = 0; i < t; ++i) {
      d[i] += partial[b * 2 * t + i];
      S[i] += partial[b * 2 * t + t + i];
    }
  *nparts = static_cast<double>((P + kSub - 1) / kSub + nblocks);
}

// Decision of the fp32 check: kStatusUnchanged or kStatusViolated when every dot's sign is
// certain, kNeedExact when some dot needs the exact fp64 check.
inline int check_dots_f32(int t, const double* d, const double* S, double nparts, double P) {
  bool violated = false;
  for (int i = 0; i < t; ++i) {
    const int sg = f32_dot_sign(d[i], S[i], nparts, P);
    if (sg == 0) return kNeedExact;
    if (sg < 0) violated = true;
  }
  return violated ? kStatusViolated : kStatusUnchanged;
}
#endif

template <typename T>
void update_cpu(const T* G, const T* g, const double* v, int t, int64_t P, T* out) {
  constexpr int64_t kChunk = 1024;
  at::parallel_for(0, P, 16384, [&](int64_t begin, int64_t end) {
    double acc[kChunk];
    for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
      const int64_t m = std::min(kChunk, end - c0);
      for (int64_t k = 0; k < m; ++k) acc[k] = to_d(g[c0 + k]);
      for (int i = 0; i < t; ++i) {
        const double vi = v[i];
        const T* row = G + static_cast<int64_t>(i) * P + c0;
        for (int64_t k = 0; k < m; ++k) acc[k] += vi * to_d(row[k]);
      }
      for (int64_t k = 0; k < m; ++k) out[c0 + k] = from_d<T>(acc[k]);
    }
  });
}

// Writes the result into out (contiguous [P], grad's dtype); out may be grad itself (in-place
// projection, as the original): pass 2 reads g[p] before writing out[p], and the copy is
// skipped when nothing is violated.
void gem_project_cpu_into(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps,
                          at::Tensor& out) {
  const at::Tensor g = grad.contiguous();
  const at::Tensor G = memory_grads.contiguous();
  const int t = static_cast<int>(G.size(0));
  const int64_t P = g.size(0);
  const bool same = out.data_ptr() == g.data_ptr();
  if (t == 0 || P == 0) {
    if (!same) out.copy_(g);
    return;
  }
  const int n = t + 1;
  std::vector<double> gram(static_cast<size_t>(packed_size(n)));
  std::vector<double> A(static_cast<size_t>(t * t)), c(t), v(t), ws(static_cast<size_t>(solve_workspace_size(t)));
  bool project = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gem_project_cpu", [&] {
    int checked = kNeedExact;
#if defined(L2KD_AVX2) && L2KD_AVX2
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::vector<double> d(t), S(t);
      double nparts = 0.0;
      dots_f32_cpu(G.const_data_ptr<float>(), g.const_data_ptr<float>(), t, P, d.data(), S.data(), &nparts);
      checked = check_dots_f32(t, d.data(), S.data(), nparts, static_cast<double>(P));
    }
#endif
    if (checked == kNeedExact) {  // some dot near 0 (or not finite), other dtypes, no AVX2
      std::vector<double> dots(static_cast<size_t>(n));
      dots_cpu<scalar_t>(G.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), t, P, dots.data());
      checked = check_dots(t, dots.data());
    }
    if (checked != kStatusViolated) {  // nothing to project (or a non-finite input to report)
      project = handle_status(checked, eps);
      return;
    }
    gram_cpu<scalar_t>(G.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), t, P, gram.data());
    const int status = gem_small_step(t, gram.data(), margin, eps, A.data(), c.data(), v.data(), ws.data());
    project = handle_status(status, eps);
    if (project) {
      update_cpu<scalar_t>(G.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), v.data(), t, P,
                           out.mutable_data_ptr<scalar_t>());
    }
  });
  if (!project && !same) out.copy_(g);
}

at::Tensor gem_project_cpu(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps) {
  check_inputs(grad, memory_grads, margin, eps);
  TORCH_CHECK(grad.device().is_cpu(), "gem_project: CPU kernel called with grad on ", grad.device());
  at::Tensor out = at::empty({grad.size(0)}, grad.options().memory_format(at::MemoryFormat::Contiguous));
  hint_huge_pages(out.data_ptr(), out.nbytes());
  gem_project_cpu_into(grad, memory_grads, margin, eps, out);
  return out;
}

at::Tensor& gem_project_out_cpu(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps,
                                at::Tensor& out) {
  check_inputs(grad, memory_grads, margin, eps);
  check_out(grad, memory_grads, out);
  TORCH_CHECK(grad.device().is_cpu(), "gem_project: CPU kernel called with grad on ", grad.device());
  gem_project_cpu_into(grad, memory_grads, margin, eps, out);
  return out;
}

}  // namespace
}  // namespace gem
}  // namespace l2kd

TORCH_LIBRARY_FRAGMENT(l2kd, m) {
  m.def("gem_project(Tensor grad, Tensor memory_grads, float margin, float eps) -> Tensor");
  // out may be grad itself: the in-place projection of the original (documented in gem_project.py).
  m.def("gem_project.out(Tensor grad, Tensor memory_grads, float margin, float eps, *, Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(l2kd, CPU, m) {
  m.impl("gem_project", &l2kd::gem::gem_project_cpu);
  m.impl("gem_project.out", &l2kd::gem::gem_project_out_cpu);
}
