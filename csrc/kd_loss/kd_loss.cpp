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
//     and stream), merged into the row's running (max, sum) with the shared
//     maxsum_merge / teacher_merge. The chunk stays in L1 between its two sweeps,
//     so each logit row is read from memory once.
//   pass 2 (gradient, only when need_grad): reads the row again (from L2/L3: a
//     row of s and t is <= 400 KB for GPT-2) and writes T/n * (q * P - p).
// The row's loss goes to a per-row buffer; the final sum runs in row order in
// double, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

// Statistics of one row: student over [0, Vs), teacher over [0, Vt).
template <typename T>
kd::RowStats row_stats(const T* s, const T* t, int64_t Vs, int64_t Vt, float invT) {
  const Vec vinv(invT), vzero(0.0f), vninf(kd::neg_inf());
  kd::MaxSum S = kd::maxsum_init();
  kd::TeacherState Tt = kd::teacher_init();
  for (int64_t c0 = 0; c0 < Vt; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, Vt);
    const int64_t cv = c0 + (c1 - c0) / kW * kW;
    // sweep 1: chunk maxima
    Vec vms = vninf, vmt = vninf;
    for (int64_t j = c0; j < cv; j += kW) {
      vms = at::vec::maximum(vms, load_vec(s + j) * vinv);
      vmt = at::vec::maximum(vmt, load_vec(t + j) * vinv);
    }
    float cms = hmax(vms), cmt = hmax(vmt);
    for (int64_t j = cv; j < c1; ++j) {
      cms = nan_max(cms, static_cast<float>(s[j]) * invT);
      cmt = nan_max(cmt, static_cast<float>(t[j]) * invT);
    }
    // sweep 2: exps relative to the chunk maxima, and the cross term
    const bool s_live = cms != kd::neg_inf(), t_live = cmt != kd::neg_inf();
    const Vec vcms(cms), vcmt(cmt);
    Vec zs = vzero, zt = vzero, A = vzero;
    for (int64_t j = c0; j < cv; j += kW) {
      const Vec b = load_vec(s + j) * vinv;
      const Vec a = load_vec(t + j) * vinv;
      if (s_live) zs = zs + (b - vcms).exp();
      if (t_live) {
        const Vec e = (a - vcmt).exp();
        zt = zt + e;
        A = A + Vec::blendv(e * (a - b), vzero, e == vzero);
      }
    }
    float zs_c = hsum(zs), zt_c = hsum(zt), A_c = hsum(A);
    for (int64_t j = cv; j < c1; ++j) {
      const float b = static_cast<float>(s[j]) * invT, a = static_cast<float>(t[j]) * invT;
      if (s_live) zs_c += kd::exp_shift(b, cms);
      if (t_live) {
        const float e = kd::exp_shift(a, cmt);
        zt_c += e;
        A_c += kd::kl_cross_term(e, a, b);
      }
    }
    S = kd::maxsum_merge(S, kd::MaxSum{cms, zs_c});
    Tt = kd::teacher_merge(Tt, kd::TeacherState{cmt, zt_c, A_c});
  }
  // student-only columns [Vt, Vs) (teacher's missing columns)
  float Bk = 0.0f;
  for (int64_t c0 = Vt; c0 < Vs; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, Vs);
    float cms = kd::neg_inf();
    for (int64_t j = c0; j < c1; ++j) cms = nan_max(cms, static_cast<float>(s[j]) * invT);
    float zs_c = 0.0f;
    for (int64_t j = c0; j < c1; ++j) {
      const float b = static_cast<float>(s[j]) * invT;
      zs_c += kd::exp_shift(b, cms);
      Bk += b;
    }
    S = kd::maxsum_merge(S, kd::MaxSum{cms, zs_c});
  }
  const float a_last = static_cast<float>(t[Vt - 1]) * invT;
  return kd::row_finish(S, Tt, a_last, static_cast<int>(Vs - Vt), Bk);
}

// Gradient of one row: g_j = scale * (q_j * P - p_j).
template <typename T>
void row_grad(const T* s, const T* t, int64_t Vs, int64_t Vt, float invT, const kd::RowStats& r, float scale,
              T* g) {
  int64_t j = 0;
  if (r.lse_s != kd::neg_inf()) {
    const Vec vinv(invT), vls(r.lse_s), vlt(r.lse_t), vcq(scale * r.P), vcp(scale);
    const int64_t vend = Vt / kW * kW;
    for (; j < vend; j += kW) {
      const Vec q = (load_vec(s + j) * vinv - vls).exp();
      const Vec p = (load_vec(t + j) * vinv - vlt).exp();
      store_vec(g + j, vcq * q - vcp * p);
    }
  }
  for (; j < Vt; ++j) {
    const float p = kd::exp_shift(static_cast<float>(t[j]) * invT, r.lse_t);
    g[j] = static_cast<T>(kd::grad_term(static_cast<float>(s[j]) * invT, p, r, scale));
  }
  for (; j < Vs; ++j) {
    g[j] = static_cast<T>(kd::grad_term(static_cast<float>(s[j]) * invT, r.p_last, r, scale));
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
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = rows[i];
      const T* s = sp + r * Vs;
      const T* t = tp + r * Vt;
      const kd::RowStats st = row_stats<T>(s, t, Vs, Vt, invT);
      row_loss[i] = st.loss;
      if (need_grad) row_grad<T>(s, t, Vs, Vt, invT, st, scale, gp + r * Vs);
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
