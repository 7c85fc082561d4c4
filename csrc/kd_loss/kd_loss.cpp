// l2kd::kd_loss: fused word-level KD loss (L2KD's KLDivLoss(batchmean) * T^2)
// and its gradient with respect to the student logits, in one op.
//
// Schema:
//   kd_loss(Tensor student, Tensor teacher, Tensor? mask, float temperature,
//           bool need_grad) -> (Tensor loss, Tensor grad_student)
// student [..., Vs], teacher [..., Vt] (Vt <= Vs, same leading dims, same dtype
// float32/float16/bfloat16, same device), mask bool [...] or None (all rows).
// loss: float32 scalar T^2 * sum_{selected rows} KL(p_t || q_s) / n_rows (0 when
// no row is selected). grad_student: d loss / d student (upstream grad 1) in the
// student's dtype and shape when need_grad, else an empty [0] tensor.
//
// CPU kernel, per selected row (rows are compacted first, so masked-out rows cost
// only the zero fill of their gradient), one thread per row (at::parallel_for):
//   pass 1 (statistics): chunks of kChunk columns; per chunk a max sweep (cheap,
//     no exp) then an exp sweep relative to the chunk max (one exp per element
//     and stream, a polynomial exp_vec), merged into the row's running (max, sum)
//     with the shared maxsum_merge / teacher_merge. The chunk stays in L1 between
//     its two sweeps, so each logit row is read from memory once. The exps and the
//     chunk maxima are kept (fp32: the student's in the gradient row itself, the
//     teacher's in a per-thread row buffer; both rows fit in L2).
//   pass 2 (gradient, only when need_grad): g = alpha_c * es - beta_c * et from the
//     kept exps (grad_chunk_alpha / grad_chunk_beta / grad_from_exps): no exp and no
//     second read of the logits. Fewer exps matter more than bytes here: with two
//     exps per element and stream the kernel was exp-bound at ~4x its byte floor.
// The row's loss goes to a per-row buffer; the final sum runs in row order in
// double, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(L2KD_AVX2) && L2KD_AVX2
#include <immintrin.h>
#endif

#include "common/cpu_memory.h"
#include "kd_loss/kd_loss_math.h"

namespace l2kd {

// Shared with kd_loss_cuda.cu: argument checks naming op and argument.
void kd_loss_check_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& mask, double temperature) {
  const auto st = student.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "l2kd::kd_loss: student_logits must be float32, float16 or bfloat16, got ", st);
  TORCH_CHECK(teacher.scalar_type() == st,
              "l2kd::kd_loss: teacher_logits must have the same dtype as student_logits (", st,
              "), got ", teacher.scalar_type());
  TORCH_CHECK(student.dim() >= 1, "l2kd::kd_loss: student_logits must have shape [..., V], got a 0-d tensor");
  TORCH_CHECK(teacher.dim() == student.dim(),
              "l2kd::kd_loss: teacher_logits must have the same number of dims as student_logits (",
              student.dim(), "), got ", teacher.dim());
  TORCH_CHECK(teacher.device() == student.device(),
              "l2kd::kd_loss: teacher_logits must be on the same device as student_logits (", student.device(),
              "), got ", teacher.device());
  for (int64_t d = 0; d + 1 < student.dim(); ++d) {
    TORCH_CHECK(student.size(d) == teacher.size(d),
                "l2kd::kd_loss: teacher_logits leading dims must match student_logits: ", teacher.sizes(),
                " vs ", student.sizes());
  }
  const int64_t Vs = student.size(-1), Vt = teacher.size(-1);
  TORCH_CHECK(Vs >= 1 && Vt >= 1, "l2kd::kd_loss: student_logits and teacher_logits need at least one column");
  TORCH_CHECK(Vt <= Vs, "l2kd::kd_loss: teacher_logits has more columns (", Vt, ") than student_logits (", Vs,
              "); only a smaller teacher vocabulary is supported");
  TORCH_CHECK(Vs <= std::numeric_limits<int32_t>::max(), "l2kd::kd_loss: vocabulary too large");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0,
              "l2kd::kd_loss: temperature must be a finite number > 0, got ", temperature);
  if (mask.has_value()) {
    const auto& mk = *mask;
    TORCH_CHECK(mk.scalar_type() == at::kBool, "l2kd::kd_loss: mask must be a bool tensor, got ", mk.scalar_type());
    TORCH_CHECK(mk.device() == student.device(), "l2kd::kd_loss: mask must be on the same device as student_logits (",
                student.device(), "), got ", mk.device());
    TORCH_CHECK(mk.dim() == student.dim() - 1, "l2kd::kd_loss: mask must have shape ",
                student.sizes().slice(0, student.dim() - 1), " (student_logits without the last dim), got ",
                mk.sizes());
    for (int64_t d = 0; d < mk.dim(); ++d) {
      TORCH_CHECK(mk.size(d) == student.size(d), "l2kd::kd_loss: mask must have shape ",
                  student.sizes().slice(0, student.dim() - 1), " (student_logits without the last dim), got ",
                  mk.sizes());
    }
  }
}

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr int64_t kChunk = 2048;  // columns per statistics chunk (8 KB per fp32 stream: stays in L1)

template <typename T>
inline Vec load_vec(const T* p) {
  Vec out;
  at::vec::load_to_float<T>(p, out);
  return out;
}
template <>
inline Vec load_vec<float>(const float* p) {
  return Vec::loadu(p);
}

template <typename T>
inline void store_vec(T* p, const Vec& v) {
  at::vec::convert_from_float<T>(v, v).store(p, kW);
}
template <>
inline void store_vec<float>(float* p, const Vec& v) {
  v.store(p);
}

inline float hmax(const Vec& v) {
  alignas(64) float buf[kW];
  v.store(buf);
  float m = buf[0];
  for (int64_t i = 1; i < kW; ++i) m = std::max(m, buf[i]);
  return m;
}
inline float hsum(const Vec& v) {
  alignas(64) float buf[kW];
  v.store(buf);
  float s = 0.0f;
  for (int64_t i = 0; i < kW; ++i) s += buf[i];
  return s;
}
// max that propagates NaN from either side (a NaN logit makes the row NaN).
inline float nan_max(float a, float b) { return (a != a || b != b) ? NAN : std::max(a, b); }

// exp(x) for the statistics sweeps, where x = logit - chunk max <= 0 (or -inf / NaN).
// AVX2: Cody-Waite reduction by ln 2 in two parts and Cephes' degree-7 polynomial for
// expf (max relative error about 2 ulp over [-87.3, 88.3], measured against fp64 by
// tests/ops/test_kd_loss.py::test_loss_accuracy_vs_fp64); about 3x the throughput of
// Sleef's 1-ulp expf8, which made the kernel exp-bound. exp(x) for x < -87.3 (below
// FLT_MIN) is flushed to 0 instead of a denormal; -inf gives 0, NaN stays NaN.
inline Vec exp_vec(const Vec& xv) {
#if defined(L2KD_AVX2) && L2KD_AVX2
  const __m256 x = xv;
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.37626f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
  return Vec(y);
#else
  return xv.exp();
#endif
}

// Per-thread buffers of the statistics pass, kept for the gradient pass.
struct RowScratch {
  std::vector<float> es;   // student exps (unused for fp32 with a gradient: they go to the gradient row)
  std::vector<float> et;   // teacher exps, Vt
  std::vector<float> ms;   // student chunk maxima
  std::vector<float> mt;   // teacher chunk maxima (-inf for a chunk without teacher columns)
};

// Pass 1 of one row (student over [0, Vs), teacher over [0, Vt)), chunk by chunk: a max sweep,
// then an exp sweep relative to the chunk maxima that also stores the exps (es, et) and the
// chunk maxima for pass 2. The chunk stays in L1 between its two sweeps, so each logit row is
// read from memory once.
template <typename T>
kd::RowStats row_stats(const T* s, const T* t, int64_t Vs, int64_t Vt, float invT, float* es, float* et,
                       float* ms, float* mt) {
  const Vec vinv(invT), vzero(0.0f), vninf(kd::neg_inf());
  kd::MaxSum S = kd::maxsum_init();
  kd::TeacherState Tt = kd::teacher_init();
  float Bk = 0.0f;
  for (int64_t c = 0, c0 = 0; c0 < Vs; ++c, c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, Vs);
    const int64_t tv = std::min(std::max(Vt, c0), c1);  // teacher columns of the chunk: [c0, tv)
    const int64_t tvv = c0 + (tv - c0) / kW * kW, svv = tv + (c1 - tv) / kW * kW;
    // sweep 1: chunk maxima
    Vec vms = vninf, vmt = vninf;
    for (int64_t j = c0; j < tvv; j += kW) {
      vms = at::vec::maximum(vms, load_vec(s + j) * vinv);
      vmt = at::vec::maximum(vmt, load_vec(t + j) * vinv);
    }
    for (int64_t j = tv; j < svv; j += kW) vms = at::vec::maximum(vms, load_vec(s + j) * vinv);
    float cms = hmax(vms), cmt = hmax(vmt);
    for (int64_t j = tvv; j < tv; ++j) {
      cms = nan_max(cms, static_cast<float>(s[j]) * invT);
      cmt = nan_max(cmt, static_cast<float>(t[j]) * invT);
    }
    for (int64_t j = svv; j < c1; ++j) cms = nan_max(cms, static_cast<float>(s[j]) * invT);
    ms[c] = cms;
    mt[c] = cmt;
    // sweep 2: exps relative to the chunk maxima (stored), the sums and the cross term
    const bool s_live = cms != kd::neg_inf(), t_live = cmt != kd::neg_inf();
    const Vec vcms(cms), vcmt(cmt);
    Vec zs = vzero, zt = vzero, A = vzero, vB = vzero;
    for (int64_t j = c0; j < tvv; j += kW) {
      const Vec b = load_vec(s + j) * vinv;
      const Vec a = load_vec(t + j) * vinv;
      const Vec eb = s_live ? exp_vec(b - vcms) : vzero;
      const Vec ea = t_live ? exp_vec(a - vcmt) : vzero;
      eb.store(es + j);
      ea.store(et + j);
      zs = zs + eb;
      zt = zt + ea;
      A = A + Vec::blendv(ea * (a - b), vzero, ea == vzero);
    }
    for (int64_t j = tv; j < svv; j += kW) {
      const Vec b = load_vec(s + j) * vinv;
      const Vec eb = s_live ? exp_vec(b - vcms) : vzero;
      eb.store(es + j);
      zs = zs + eb;
      vB = vB + b;
    }
    float zs_c = hsum(zs), zt_c = hsum(zt), A_c = hsum(A);
    Bk += hsum(vB);
    for (int64_t j = tvv; j < tv; ++j) {
      const float b = static_cast<float>(s[j]) * invT, a = static_cast<float>(t[j]) * invT;
      es[j] = s_live ? kd::exp_shift(b, cms) : 0.0f;
      et[j] = t_live ? kd::exp_shift(a, cmt) : 0.0f;
      zs_c += es[j];
      zt_c += et[j];
      A_c += kd::kl_cross_term(et[j], a, b);
    }
    for (int64_t j = svv; j < c1; ++j) {
      const float b = static_cast<float>(s[j]) * invT;
      es[j] = s_live ? kd::exp_shift(b, cms) : 0.0f;
      zs_c += es[j];
      Bk += b;
    }
    S = kd::maxsum_merge(S, kd::MaxSum{cms, zs_c});
    if (tv > c0) Tt = kd::teacher_merge(Tt, kd::TeacherState{cmt, zt_c, A_c});
  }
  const float a_last = static_cast<float>(t[Vt - 1]) * invT;
  return kd::row_finish(S, Tt, a_last, static_cast<int>(Vs - Vt), Bk);
}

// Pass 2 of one row from the saved exps: g_j = alpha_c * es_j - beta_c * et_j (one
// multiply-add per element, no exp), with et_j = p_last for the widened columns j >= Vt.
// es may alias g (fp32): each element is read before it is written.
template <typename T>
void row_grad(const float* es, const float* et, const float* ms, const float* mt, int64_t Vs, int64_t Vt,
              const kd::RowStats& r, float scale, T* g) {
  for (int64_t c = 0, c0 = 0; c0 < Vs; ++c, c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, Vs);
    const int64_t tv = std::min(std::max(Vt, c0), c1);
    const float alpha = kd::grad_chunk_alpha(ms[c], r, scale);
    const float beta = tv > c0 ? kd::grad_chunk_beta(mt[c], r, scale) : 0.0f;
    const Vec va(alpha), vb(beta), vpl(scale * r.p_last);
    int64_t j = c0;
    for (; j + kW <= tv; j += kW) store_vec(g + j, va * Vec::loadu(es + j) - vb * Vec::loadu(et + j));
    for (; j < tv; ++j) g[j] = static_cast<T>(kd::grad_from_exps(es[j], et[j], alpha, beta));
    for (; j + kW <= c1; j += kW) store_vec(g + j, va * Vec::loadu(es + j) - vpl);
    for (; j < c1; ++j) g[j] = static_cast<T>(kd::grad_from_exps(es[j], r.p_last, alpha, scale));
  }
}

template <typename T>
void kd_loss_cpu_impl(const at::Tensor& s2, const at::Tensor& t2, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& dropped, float temperature, bool need_grad, at::Tensor& grad2,
                      std::vector<float>& row_loss) {
  const int64_t Vs = s2.size(1), Vt = t2.size(1);
  const T* sp = s2.data_ptr<T>();
  const T* tp = t2.data_ptr<T>();
  T* gp = need_grad ? grad2.data_ptr<T>() : nullptr;
  const float invT = 1.0f / temperature;
  const int64_t n = static_cast<int64_t>(rows.size());
  const float scale = n > 0 ? temperature / static_cast<float>(n) : 0.0f;
  const int64_t nchunks = (Vs + kChunk - 1) / kChunk;
  // fp32 with a gradient: the student exps go straight to the gradient row (rewritten in place by pass 2).
  constexpr bool kFloat = std::is_same_v<T, float>;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    RowScratch sc;
    sc.es.resize(kFloat && need_grad ? 0 : Vs);
    sc.et.resize(Vt);
    sc.ms.resize(nchunks);
    sc.mt.resize(nchunks);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = rows[i];
      const T* s = sp + r * Vs;
      const T* t = tp + r * Vt;
      float* es = sc.es.data();
      if constexpr (kFloat) {
        if (need_grad) es = gp + r * Vs;
      }
      const kd::RowStats st = row_stats<T>(s, t, Vs, Vt, invT, es, sc.et.data(), sc.ms.data(), sc.mt.data());
      row_loss[i] = st.loss;
      if (need_grad) row_grad<T>(es, sc.et.data(), sc.ms.data(), sc.mt.data(), Vs, Vt, st, scale, gp + r * Vs);
    }
  });
  if (need_grad && !dropped.empty()) {
    at::parallel_for(0, static_cast<int64_t>(dropped.size()), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) std::fill_n(gp + dropped[i] * Vs, Vs, static_cast<T>(0.0f));
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> kd_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                               const std::optional<at::Tensor>& mask, double temperature,
                                               bool need_grad) {
  kd_loss_check_inputs(student, teacher, mask, temperature);
  TORCH_CHECK(student.device().is_cpu(), "l2kd::kd_loss (CPU): student_logits must be a CPU tensor");
  const int64_t Vs = student.size(-1), Vt = teacher.size(-1);
  const at::Tensor s2 = student.contiguous().view({-1, Vs});
  const at::Tensor t2 = teacher.contiguous().view({-1, Vt});
  const int64_t N = s2.size(0);

  std::vector<int64_t> rows, dropped;
  rows.reserve(N);
  if (mask.has_value()) {
    const at::Tensor m = mask->contiguous();
    const bool* mp = m.data_ptr<bool>();
    for (int64_t r = 0; r < N; ++r) (mp[r] ? rows : dropped).push_back(r);
  } else {
    for (int64_t r = 0; r < N; ++r) rows.push_back(r);
  }

  at::Tensor grad = need_grad ? at::empty(student.sizes(), student.options().memory_format(at::MemoryFormat::Contiguous))
                              : at::empty({0}, student.options());
  if (need_grad) l2kd::hint_huge_pages(grad.data_ptr(), grad.nbytes());
  at::Tensor grad2 = need_grad ? grad.view({-1, Vs}) : grad;
  std::vector<float> row_loss(rows.size(), 0.0f);
  const float T = static_cast<float>(temperature);
  switch (student.scalar_type()) {
    case at::kFloat:
      kd_loss_cpu_impl<float>(s2, t2, rows, dropped, T, need_grad, grad2, row_loss);
      break;
    case at::kHalf:
      kd_loss_cpu_impl<at::Half>(s2, t2, rows, dropped, T, need_grad, grad2, row_loss);
      break;
    default:  // kBFloat16 (checked above)
      kd_loss_cpu_impl<at::BFloat16>(s2, t2, rows, dropped, T, need_grad, grad2, row_loss);
      break;
  }
  double total = 0.0;  // fixed (row) order: deterministic whatever the thread count
  for (float v : row_loss) total += static_cast<double>(v);
  const double n = static_cast<double>(rows.size());
  const float loss_value = rows.empty() ? 0.0f : static_cast<float>(static_cast<double>(T) * T * total / n);
  at::Tensor loss = at::full({}, loss_value, student.options().dtype(at::kFloat));
  return {loss, grad};
}

}  // namespace l2kd

TORCH_LIBRARY_FRAGMENT(l2kd, m) {
  m.def(
      "kd_loss(Tensor student, Tensor teacher, Tensor? mask, float temperature, bool need_grad) -> "
      "(Tensor loss, Tensor grad_student)");
}

TORCH_LIBRARY_IMPL(l2kd, CPU, m) { m.impl("kd_loss", &l2kd::kd_loss_cpu); }
