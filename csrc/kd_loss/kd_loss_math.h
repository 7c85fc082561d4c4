// Per-element and per-row arithmetic of the fused KD loss, shared by the CPU
// kernel (kd_loss.cpp) and the CUDA kernel (kd_loss_cuda.cu), so the CPU tests
// exercise the arithmetic the GPU runs.
//
// Notation for one row (T = temperature):
//   b_j = s_j / T (student, Vs columns),  a_j = t_j / T (teacher, Vt <= Vs columns)
//   log q_j = b_j - lse_s,                log p_j = a_j - lse_t
// The teacher's probabilities are widened to Vs columns by repeating p_last =
// p_{Vt-1} for the k = Vs - Vt missing columns (as the original L2KD does), so
// the row sums to P = 1 + k * p_last.
//   row KL = sum_{j<Vt} p_j (log p_j - log q_j) + sum_{j>=Vt} p_last (log p_last - log q_j)
//          = A / Z_t + lse_s - lse_t + p_last * (k * (log p_last + lse_s) - B_k)
// with  Z_t = sum_{j<Vt} exp(a_j - m_t),  A = sum_{j<Vt} exp(a_j - m_t) * (a_j - b_j),
//       B_k = sum_{j>=Vt} b_j.
// A term with p_j = 0 contributes 0 (0 * log 0 = 0, also when log q_j = -inf).
// A -inf student logit where p_j > 0 makes the row KL +inf (never NaN).
//   d(row KL)/d b_j = q_j * P - p_j     (p_j = p_last for j >= Vt)
//
// All arithmetic is fp32. The exp/log here are the precise library functions
// (expf/logf; on CUDA the IEEE-accurate versions, no fast-math intrinsics).
#pragma once

#include <cmath>

#include "common/l2kd_hd.h"

namespace l2kd {
namespace kd {

#define L2KD_KD_INF (INFINITY)  // a constant expression, usable on host and device

L2KD_HD float neg_inf() { return -L2KD_KD_INF; }
L2KD_HD float pos_inf() { return L2KD_KD_INF; }

// exp(x - m), with exp(-inf - m) = 0 also when m = -inf (an all -inf prefix).
L2KD_HD float exp_shift(float x, float m) {
  return (x == -L2KD_KD_INF) ? 0.0f : expf(x - m);
}

// Running (max, sum of exp(x - max)) of one stream.
struct MaxSum {
  float m;
  float z;
};

L2KD_HD MaxSum maxsum_init() { return MaxSum{-L2KD_KD_INF, 0.0f}; }

// Add one element x to a running (max, sum): one exp per element.
L2KD_HD void maxsum_add(MaxSum& st, float x) {
  if (x > st.m) {
    st.z = st.z * exp_shift(st.m, x) + 1.0f;
    st.m = x;
  } else {
    st.z += exp_shift(x, st.m);
  }
}

// Merge two running (max, sum) states (associative up to rounding).
L2KD_HD MaxSum maxsum_merge(MaxSum x, MaxSum y) {
  const float m = x.m > y.m ? x.m : y.m;
  if (m == -L2KD_KD_INF) return MaxSum{m, 0.0f};
  return MaxSum{m, x.z * exp_shift(x.m, m) + y.z * exp_shift(y.m, m)};
}

// log-sum-exp of a finished state; -inf for an all -inf stream.
L2KD_HD float maxsum_lse(MaxSum st) {
  return (st.m == -L2KD_KD_INF) ? st.m : st.m + logf(st.z);
}

// Teacher stream with the cross term: (m_t, Z_t, A) where
// A = sum exp(a_j - m_t) * (a_j - b_j).
struct TeacherState {
  float m;
  float z;
  float A;
};

L2KD_HD TeacherState teacher_init() { return TeacherState{-L2KD_KD_INF, 0.0f, 0.0f}; }

// Per-element KL cross term e * (a - b), with 0 when e = 0 (p_j = 0 contributes 0).
L2KD_HD float kl_cross_term(float e, float a, float b) {
  return (e == 0.0f) ? 0.0f : e * (a - b);
}

L2KD_HD void teacher_add(TeacherState& st, float a, float b) {
  if (a > st.m) {
    const float r = exp_shift(st.m, a);
    st.z = st.z * r + 1.0f;
    st.A = (r == 0.0f ? 0.0f : st.A * r) + (a - b);
    st.m = a;
  } else {
    const float e = exp_shift(a, st.m);
    st.z += e;
    st.A += kl_cross_term(e, a, b);
  }
}

L2KD_HD TeacherState teacher_merge(TeacherState x, TeacherState y) {
  const float m = x.m > y.m ? x.m : y.m;
  if (m == -L2KD_KD_INF) return TeacherState{m, 0.0f, 0.0f};
  const float rx = exp_shift(x.m, m);
  const float ry = exp_shift(y.m, m);
  const float ax = rx == 0.0f ? 0.0f : x.A * rx;
  const float ay = ry == 0.0f ? 0.0f : y.A * ry;
  return TeacherState{m, x.z * rx + y.z * ry, ax + ay};
}

// Row statistics after the statistics pass.
struct RowStats {
  float lse_s;      // log-sum-exp of b over Vs columns
  float lse_t;      // log-sum-exp of a over Vt columns
  float p_last;     // teacher probability of its last column
  float P;          // widened teacher row sum, 1 + k * p_last
  float loss;       // row KL (without T^2 and 1/n)
};

// Finish a row: st = student (max, sum) over all Vs columns, tt = teacher state
// over the Vt columns, a_last = t_{Vt-1}/T, k = Vs - Vt, Bk = sum_{j>=Vt} b_j.
L2KD_HD RowStats row_finish(MaxSum st, TeacherState tt, float a_last, int k, float Bk) {
  RowStats r;
  r.lse_s = maxsum_lse(st);
  r.lse_t = maxsum_lse(tt.m == -L2KD_KD_INF ? MaxSum{tt.m, 0.0f} : MaxSum{tt.m, tt.z});
  const float logp_last = a_last - r.lse_t;
  r.p_last = exp_shift(a_last, r.lse_t);
  r.P = 1.0f + static_cast<float>(k) * r.p_last;
  if (r.lse_s == -L2KD_KD_INF) {
    // The student puts no mass anywhere while the teacher does: KL = +inf.
    r.loss = L2KD_KD_INF;
    return r;
  }
  float loss = tt.A / tt.z + (r.lse_s - r.lse_t);
  if (k > 0 && r.p_last > 0.0f) {
    loss += r.p_last * (static_cast<float>(k) * (logp_last + r.lse_s) - Bk);
  }
  r.loss = loss;
  return r;
}

// Student probability q_j = exp(b_j - lse_s); 0 when the student row is all -inf.
L2KD_HD float student_prob(float b, float lse_s) {
  return (lse_s == -L2KD_KD_INF) ? 0.0f : exp_shift(b, lse_s);
}

// Per-element gradient of the scaled loss: scale * (q_j * P - p_j),
// scale = T * grad_out / n_rows.
L2KD_HD float grad_term(float b, float p, const RowStats& r, float scale) {
  return scale * (student_prob(b, r.lse_s) * r.P - p);
}

// The CPU kernel keeps the exps of its statistics pass instead of recomputing them:
// es_j = exp(b_j - ms_c), et_j = exp(a_j - mt_c) with ms_c, mt_c the maxima of j's column
// chunk c. Then q_j * P = es_j * exp(ms_c - lse_s) * P and p_j = et_j * exp(mt_c - lse_t),
// so the gradient needs one multiply-add per element and one exp per chunk and stream.
// Chunk factor of the student (alpha_c) and of the teacher (beta_c), scale included;
// 0 for a chunk (or row) whose stream is all -inf.
L2KD_HD float grad_chunk_alpha(float ms_c, const RowStats& r, float scale) {
  return (r.lse_s == -L2KD_KD_INF) ? 0.0f : scale * r.P * exp_shift(ms_c, r.lse_s);
}
L2KD_HD float grad_chunk_beta(float mt_c, const RowStats& r, float scale) {
  return scale * exp_shift(mt_c, r.lse_t);
}
// Gradient element from the saved exps: alpha_c * es_j - beta_c * et_j (for a widened column
// j >= Vt pass beta = scale and et = p_last).
L2KD_HD float grad_from_exps(float es, float et, float alpha, float beta) {
  return alpha * es - beta * et;
}

}  // namespace kd
}  // namespace l2kd
