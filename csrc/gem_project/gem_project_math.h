// Arithmetic of l2kd::gem_project shared by the CPU and the CUDA kernels.
//
// GEM's projection (the original project2cone2, solved there with quadprog) needs, for
// memories G [t, P] and the current gradient g [P]:
//   A = G G^T + eps I      (t x t, symmetric positive definite for eps > 0)
//   c = G g                (t)
//   v* = argmin_v 1/2 v^T A v + c^T v   subject to   v >= margin   (element-wise)
//   out = g + G^T v*
// Everything here is fp64. The small box-constrained QP is solved exactly (finite active-set
// termination, no iteration-to-tolerance) by Lawson-Hanson's active-set method on the shifted
// variable u = v - margin >= 0:
//   min_u 1/2 u^T A u + b^T u,  u >= 0,   b = c + margin * A 1.
// Lawson and Hanson's NNLS algorithm (Solving Least Squares Problems, 1974, ch. 23) is stated
// for min |M u - y|^2; it only ever touches the normal equations M^T M and M^T y, so it applies
// verbatim to any symmetric positive definite A = M^T M and b = -M^T y. Each inner step solves
// the equality-constrained problem on the current free set by a Cholesky factorisation of the
// principal submatrix A_FF (positive definite because A is). Projected Gauss-Seidel would only
// converge linearly, and very slowly on nearly parallel memories; this terminates exactly.
//
// The functions take a caller-provided fp64 workspace so that neither the CPU nor the single
// CUDA thread that runs the solve needs large stack arrays.
#pragma once

#include "common/l2kd_hd.h"

#include <math.h>

namespace l2kd {
namespace gem {

// Largest number of memories (past tasks) the op accepts.
constexpr int kMaxT = 64;

// Status codes of gem_solve_dual.
constexpr int kSolveOk = 0;
constexpr int kSolveNotPositiveDefinite = 1;  // a principal submatrix of A failed Cholesky
constexpr int kSolveNoConvergence = 2;        // iteration cap hit (round-off cycling)

// Index of (i, j), i <= j < n, in the packed upper triangle (row-major) of an n x n matrix.
L2KD_HD int packed_index(int i, int j, int n) { return i * n - (i * (i - 1)) / 2 + (j - i); }

// Number of entries of the packed upper triangle of an n x n matrix.
L2KD_HD int packed_size(int n) { return n * (n + 1) / 2; }

// Doubles of workspace gem_solve_dual needs for t memories.
L2KD_HD int solve_workspace_size(int t) { return t * t + 7 * t; }

L2KD_HD double dabs(double x) { return x < 0.0 ? -x : x; }
L2KD_HD double dmax(double a, double b) { return a > b ? a : b; }

// Solve A_FF z_F = rhs_F for the free set F (flag free[i] != 0) of an n x n row-major SPD
// matrix A, by Cholesky. L is an n x n scratch (only the |F| x |F| top-left part is used),
// idx an |F| scratch of indices, y an |F| scratch. z gets the solution on F and 0 elsewhere.
// Returns false when A_FF is not (numerically) positive definite.
L2KD_HD bool solve_free_set(int n, const double* A, const double* rhs, const double* free_flag,
                            double* z, double* L, double* idx, double* y) {
  int m = 0;
  for (int i = 0; i < n; ++i) {
    z[i] = 0.0;
    if (free_flag[i] != 0.0) idx[m++] = static_cast<double>(i);
  }
  if (m == 0) return true;
  // Cholesky A_FF = L L^T (L lower, row-major m x m in the n x n buffer).
  for (int r = 0; r < m; ++r) {
    const int ir = static_cast<int>(idx[r]);
    for (int col = 0; col <= r; ++col) {
      const int ic = static_cast<int>(idx[col]);
      double s = A[ir * n + ic];
      for (int k = 0; k < col; ++k) s -= L[r * n + k] * L[col * n + k];
      if (col == r) {
        if (!(s > 0.0)) return false;  // also catches NaN
        L[r * n + r] = ::sqrt(s);
      } else {
        L[r * n + col] = s / L[col * n + col];
      }
    }
  }
  // Forward: L y = rhs_F; backward: L^T z_F = y.
  for (int r = 0; r < m; ++r) {
    double s = rhs[static_cast<int>(idx[r])];
    for (int k = 0; k < r; ++k) s -= L[r * n + k] * y[k];
    y[r] = s / L[r * n + r];
  }
  for (int r = m - 1; r >= 0; --r) {
    double s = y[r];
    for (int k = r + 1; k < m; ++k) s -= L[k * n + r] * y[k];
    y[r] = s / L[r * n + r];
  }
  for (int r = 0; r < m; ++r) z[static_cast<int>(idx[r])] = y[r];
  return true;
}

// Exact solve of GEM's dual QP: v = argmin 1/2 v^T A v + c^T v subject to v >= margin.
// A: t x t row-major symmetric positive definite (the caller adds eps I), c: t. Writes v (t).
// ws: solve_workspace_size(t) doubles. Returns kSolveOk or an error code.
L2KD_HD int gem_solve_dual(int t, const double* A, const double* c, double margin, double* v,
                           double* ws) {
  double* L = ws;              // t * t
  double* b = L + t * t;       // t: linear term of the shifted problem
  double* u = b + t;           // t: current iterate (u = v - margin >= 0)
  double* z = u + t;           // t: free-set solution
  double* free_flag = z + t;   // t: 1 if in the free (passive) set
  double* rejected = free_flag + t;  // t: 1 if the candidate was rejected (round-off guard)
  double* idx = rejected + t;  // t
  double* y = idx + t;         // t

  for (int i = 0; i < t; ++i) {
    double s = c[i];
    for (int j = 0; j < t; ++j) s += margin * A[i * t + j];
    b[i] = s;
    u[i] = 0.0;
    free_flag[i] = 0.0;
    rejected[i] = 0.0;
  }
  // Scale for the optimality tolerance: the size of the gradient's terms.
  double scale = 0.0;
  for (int i = 0; i < t; ++i) scale = dmax(scale, dmax(dabs(b[i]), dabs(A[i * t + i])));
  const int max_outer = 3 * t + 30;
  const int max_inner = 3 * t + 30;
  // The free-set solve needs rhs -b: b is negated in place around each call.
  for (int outer = 0; outer < max_outer; ++outer) {
    // w = -(A u + b): the negative gradient. Pick the most positive w_j among the bound
    // (u_j = 0) and not rejected indices.
    double grad_scale = scale;
    int jbest = -1;
    double wbest = 0.0;
    for (int i = 0; i < t; ++i) {
      double s = b[i];
      for (int j = 0; j < t; ++j) s += A[i * t + j] * u[j];
      grad_scale = dmax(grad_scale, dabs(s));
      if (free_flag[i] == 0.0 && rejected[i] == 0.0 && -s > wbest) {
        wbest = -s;
        jbest = i;
      }
    }
    if (jbest < 0 || wbest <= 1e-13 * grad_scale) {
      for (int i = 0; i < t; ++i) v[i] = margin + u[i];
      return kSolveOk;
    }
    free_flag[jbest] = 1.0;
    bool first = true;
    int inner = 0;
    for (;; ++inner) {
      if (inner >= max_inner) return kSolveNoConvergence;
      for (int i = 0; i < t; ++i) b[i] = -b[i];
      const bool ok = solve_free_set(t, A, b, free_flag, z, L, idx, y);
      for (int i = 0; i < t; ++i) b[i] = -b[i];
      if (!ok) return kSolveNotPositiveDefinite;
      if (first && !(z[jbest] > 0.0)) {
        // Round-off: the chosen direction does not move j off its bound. Lawson-Hanson's
        // guard: drop j for this round and try the next candidate.
        free_flag[jbest] = 0.0;
        rejected[jbest] = 1.0;
        break;
      }
      first = false;
      bool all_pos = true;
      for (int i = 0; i < t; ++i)
        if (free_flag[i] != 0.0 && !(z[i] > 0.0)) all_pos = false;
      if (all_pos) {
        for (int i = 0; i < t; ++i) {
          u[i] = z[i];
          rejected[i] = 0.0;
        }
        break;
      }
      // Step from u towards z until the first free variable hits its bound.
      double alpha = 2.0;
      int ihit = -1;
      for (int i = 0; i < t; ++i) {
        if (free_flag[i] != 0.0 && !(z[i] > 0.0)) {
          const double den = u[i] - z[i];
          const double a = den > 0.0 ? u[i] / den : 0.0;
          if (a < alpha) {
            alpha = a;
            ihit = i;
          }
        }
      }
      for (int i = 0; i < t; ++i) {
        if (free_flag[i] != 0.0) {
          u[i] += alpha * (z[i] - u[i]);
          if (i == ihit || !(u[i] > 0.0)) {
            u[i] = 0.0;
            free_flag[i] = 0.0;
          }
        }
      }
      for (int i = 0; i < t; ++i) rejected[i] = 0.0;
    }
  }
  return kSolveNoConvergence;
}

// Load the augmented Gram (packed upper triangle of [G; g][G; g]^T, n = t + 1 rows; the last
// row is g) into the dual's A (with eps on the diagonal, symmetrised as the original does)
// and c = G g. Returns a status:
//   0 nothing violated (every c_i >= 0) -> leave g unchanged
//   1 violated -> solve
//  -1 memory_grads not finite (a diagonal entry of G G^T or an entry of G g is not finite)
//  -2 grad not finite (g.g not finite): the projection is undefined; g is left unchanged
constexpr int kStatusUnchanged = 0;
constexpr int kStatusViolated = 1;
constexpr int kStatusMemoryNonFinite = -1;
constexpr int kStatusGradNonFinite = -2;
constexpr int kStatusSolveFailed = -3;
constexpr int kStatusNoConvergence = -4;

L2KD_HD bool finite(double x) { return x - x == 0.0; }

// The cheap "is any memory violated?" check in fp32 with a rigorous error bound.
// A dot d = sum_k g_k G_ik accumulated in fp32 (FMA chains of at most kF32Chain roundings
// per partial, partials summed in fp64 in a fixed order) together with S = the same sum of
// |g_k G_ik| obeys |d - exact| <= E = S * kF32Chain * 2^-24 (1 + 1e-4) + nparts * 2^-52 * S
// + P * 2^-149 (rounding of the chains, of the fp64 sum of nparts partials, and of
// underflowing products). f32_dot_sign says +1 when the exact dot is certainly > 0, -1 when
// certainly < 0, and 0 when |d| is within E or a value is not finite: then the dot is
// recomputed exactly in fp64, so the decision equals the fp64 check's and does not depend
// on the thread count.
constexpr int kF32Chain = 144;  // 128 FMAs per lane + 3 horizontal adds + 7 tail terms + slack

L2KD_HD int f32_dot_sign(double d, double S, double nparts, double P) {
  const double u = 5.9604644775390625e-08;           // 2^-24
  const double tiny = 1.4012984643248171e-45;        // 2^-149
  const double E = S * (kF32Chain * u * 1.0001 + nparts * 2.220446049250313e-16) + P * tiny;
  if (d - E > 0.0) return 1;
  if (d + E < 0.0) return -1;
  return 0;  // near 0 relative to the bound, or inf / NaN
}

L2KD_HD int unpack_gram(int t, const double* gram_packed, double eps, double* A, double* c) {
  const int n = t + 1;
  bool mem_ok = true;
  for (int i = 0; i < t; ++i) {
    for (int j = i; j < t; ++j) {
      const double x = gram_packed[packed_index(i, j, n)];
      // 0.5 * (P + P^T) is exact for the symmetric packed value.
      A[i * t + j] = x;
      A[j * t + i] = x;
    }
    A[i * t + i] += eps;
    if (!finite(gram_packed[packed_index(i, i, n)])) mem_ok = false;
  }
  const double gg = gram_packed[packed_index(t, t, n)];
  bool violated = false;
  bool c_ok = true;
  for (int i = 0; i < t; ++i) {
    c[i] = gram_packed[packed_index(i, t, n)];
    if (!finite(c[i])) c_ok = false;
    if (c[i] < 0.0) violated = true;
  }
  if (!mem_ok) return kStatusMemoryNonFinite;
  if (!finite(gg) || !c_ok) return kStatusGradNonFinite;
  return violated ? kStatusViolated : kStatusUnchanged;
}

// Full small step: from the packed augmented Gram to v. Returns a kStatus* code.
L2KD_HD int gem_small_step(int t, const double* gram_packed, double margin, double eps, double* A,
                           double* c, double* v, double* ws) {
  const int st = unpack_gram(t, gram_packed, eps, A, c);
  if (st != kStatusViolated) return st;
  const int r = gem_solve_dual(t, A, c, margin, v, ws);
  if (r == kSolveNotPositiveDefinite) return kStatusSolveFailed;
  if (r == kSolveNoConvergence) return kStatusNoConvergence;
  return kStatusViolated;
}

}  // namespace gem
}  // namespace l2kd
