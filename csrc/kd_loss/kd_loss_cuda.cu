// CUDA implementation of l2kd::kd_loss (schema and CPU kernel in kd_loss.cpp).
//
// One block per row (rows are independent and GPT-2 rows are long: 50257 columns).
//   pass 1: every thread walks its strided columns once, keeping the online
//     (max, sum) of s/T and the teacher's (max, sum, cross term) with the shared
//     maxsum_add / teacher_add (one exp per element and stream), then a warp
//     shuffle + shared-memory merge with maxsum_merge / teacher_merge.
//   pass 2 (need_grad): the row is read again (mostly from L2) and
//     T/n * (q * P - p) is written in the student's dtype.
// Loads are 16-byte vectors when the row pointers allow it (a scalar head aligns
// them; V = 50257 rows are misaligned), with a scalar tail. A row the mask drops
// only zeroes its gradient. Per-row losses go to a buffer that one block sums in
// a fixed order, so the loss is deterministic. The row count n for a mask is
// computed on the device (no host sync). fp32 math, accurate expf/logf (no
// fast-math), nothing sm_70 lacks.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "kd_loss/kd_loss_math.h"

namespace l2kd {

void kd_loss_check_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& mask, double temperature);

namespace {

constexpr int kMaxThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
struct alignas(16) Pack16 {
  T v[16 / sizeof(T)];
};

__device__ __forceinline__ kd::MaxSum shfl_merge(kd::MaxSum x, int off) {
  kd::MaxSum y{__shfl_xor_sync(kFullMask, x.m, off), __shfl_xor_sync(kFullMask, x.z, off)};
  return kd::maxsum_merge(x, y);
}
__device__ __forceinline__ kd::TeacherState shfl_merge(kd::TeacherState x, int off) {
  kd::TeacherState y{__shfl_xor_sync(kFullMask, x.m, off), __shfl_xor_sync(kFullMask, x.z, off),
                     __shfl_xor_sync(kFullMask, x.A, off)};
  return kd::teacher_merge(x, y);
}
__device__ __forceinline__ float shfl_merge(float x, int off) { return x + __shfl_xor_sync(kFullMask, x, off); }
__device__ __forceinline__ int shfl_merge(int x, int off) { return x + __shfl_xor_sync(kFullMask, x, off); }

__device__ __forceinline__ kd::MaxSum merge(kd::MaxSum x, kd::MaxSum y) { return kd::maxsum_merge(x, y); }
__device__ __forceinline__ kd::TeacherState merge(kd::TeacherState x, kd::TeacherState y) {
  return kd::teacher_merge(x, y);
}
__device__ __forceinline__ float merge(float x, float y) { return x + y; }
__device__ __forceinline__ int merge(int x, int y) { return x + y; }

// Block-wide merge (blockDim.x a multiple of 32, <= kMaxThreads); every thread gets the result.
template <typename S>
__device__ S block_merge(S x, S* smem) {
  for (int off = 16; off > 0; off >>= 1) x = shfl_merge(x, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    S y = smem[lane < nwarps ? lane : 0];
    for (int w = 1; w < nwarps; ++w) {
      // fixed order on lane 0 (nwarps <= 8): deterministic and cheap
      if (lane == 0) y = merge(y, smem[w]);
    }
    if (lane == 0) smem[0] = y;
  }
  __syncthreads();
  S out = smem[0];
  __syncthreads();  // smem is reused by the next merge
  return out;
}

// Number of leading elements to peel so that p becomes 16-byte aligned (0..kVec-1), or -1 when
// the element size does not divide the address (never for fp32/fp16/bf16 tensors).
template <typename T>
__device__ __forceinline__ int64_t align_head(const T* p) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  if (addr % sizeof(T) != 0) return -1;
  return (kVec - static_cast<int64_t>((addr / sizeof(T)) % kVec)) % kVec;
}

template <typename T>
__global__ void kd_loss_rows_kernel(const T* __restrict__ s, const T* __restrict__ t, const bool* __restrict__ mask,
                                    const int* __restrict__ n_sel, int64_t n_rows, int64_t Vs, int64_t Vt,
                                    float invT, float temperature, bool need_grad, T* __restrict__ grad,
                                    float* __restrict__ row_loss) {
  constexpr int64_t kVec = 16 / sizeof(T);
  __shared__ kd::TeacherState smem_t[kMaxThreads / 32];
  __shared__ kd::MaxSum smem_s[kMaxThreads / 32];
  __shared__ float smem_f[kMaxThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t tid = threadIdx.x, nth = blockDim.x;
  const T* sr = s + row * Vs;
  const T* tr = t + row * Vt;
  T* gr = need_grad ? grad + row * Vs : nullptr;

  if (mask != nullptr && !mask[row]) {
    if (need_grad) {
      for (int64_t j = tid; j < Vs; j += nth) gr[j] = static_cast<T>(0.0f);
    }
    if (tid == 0) row_loss[row] = 0.0f;
    return;
  }

  // Column split for [0, Vt): scalar head, 16-byte vectors, scalar tail.
  int64_t head = align_head(sr);
  const bool vec_ok = head >= 0 && head <= Vt && align_head(tr + head) == 0 &&
                      (!need_grad || align_head(gr + head) == 0);
  if (!vec_ok) head = Vt;
  const int64_t nvec = (Vt - head) / kVec;
  const int64_t tail0 = head + nvec * kVec;

  // pass 1: statistics
  kd::MaxSum S = kd::maxsum_init();
  kd::TeacherState Tt = kd::teacher_init();
  for (int64_t j = tid; j < head; j += nth) {
    const float b = static_cast<float>(sr[j]) * invT, a = static_cast<float>(tr[j]) * invT;
    kd::maxsum_add(S, b);
    kd::teacher_add(Tt, a, b);
  }
  const Pack16<T>* sv = reinterpret_cast<const Pack16<T>*>(sr + head);
  const Pack16<T>* tv = reinterpret_cast<const Pack16<T>*>(tr + head);
  for (int64_t i = tid; i < nvec; i += nth) {
    const Pack16<T> ps = sv[i], pt = tv[i];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float b = static_cast<float>(ps.v[e]) * invT, a = static_cast<float>(pt.v[e]) * invT;
      kd::maxsum_add(S, b);
      kd::teacher_add(Tt, a, b);
    }
  }
  for (int64_t j = tail0 + tid; j < Vt; j += nth) {
    const float b = static_cast<float>(sr[j]) * invT, a = static_cast<float>(tr[j]) * invT;
    kd::maxsum_add(S, b);
    kd::teacher_add(Tt, a, b);
  }
  float Bk = 0.0f;  // teacher's missing columns (few): scalar
  for (int64_t j = Vt + tid; j < Vs; j += nth) {
    const float b = static_cast<float>(sr[j]) * invT;
    kd::maxsum_add(S, b);
    Bk += b;
  }
  S = block_merge(S, smem_s);
  Tt = block_merge(Tt, smem_t);
  Bk = block_merge(Bk, smem_f);
  const float a_last = static_cast<float>(tr[Vt - 1]) * invT;
  const kd::RowStats r = kd::row_finish(S, Tt, a_last, static_cast<int>(Vs - Vt), Bk);
  if (tid == 0) row_loss[row] = r.loss;
  if (!need_grad) return;

  // pass 2: gradient, scale = T / n (upstream gradient 1)
  const int n = n_sel != nullptr ? *n_sel : static_cast<int>(n_rows);
  const float scale = temperature / static_cast<float>(n);
  for (int64_t j = tid; j < head; j += nth) {
    const float p = kd::exp_shift(static_cast<float>(tr[j]) * invT, r.lse_t);
    gr[j] = static_cast<T>(kd::grad_term(static_cast<float>(sr[j]) * invT, p, r, scale));
  }
  Pack16<T>* gv = reinterpret_cast<Pack16<T>*>(gr + head);
  for (int64_t i = tid; i < nvec; i += nth) {
    const Pack16<T> ps = sv[i], pt = tv[i];
    Pack16<T> pg;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float p = kd::exp_shift(static_cast<float>(pt.v[e]) * invT, r.lse_t);
      pg.v[e] = static_cast<T>(kd::grad_term(static_cast<float>(ps.v[e]) * invT, p, r, scale));
    }
    gv[i] = pg;
  }
  for (int64_t j = tail0 + tid; j < Vt; j += nth) {
    const float p = kd::exp_shift(static_cast<float>(tr[j]) * invT, r.lse_t);
    gr[j] = static_cast<T>(kd::grad_term(static_cast<float>(sr[j]) * invT, p, r, scale));
  }
  for (int64_t j = Vt + tid; j < Vs; j += nth) {
    gr[j] = static_cast<T>(kd::grad_term(static_cast<float>(sr[j]) * invT, r.p_last, r, scale));
  }
}

// n_sel = number of true entries of mask (one block, fixed order).
__global__ void kd_loss_count_kernel(const bool* __restrict__ mask, int64_t n_rows, int* __restrict__ n_sel) {
  __shared__ int smem[kMaxThreads / 32];
  int c = 0;
  for (int64_t i = threadIdx.x; i < n_rows; i += blockDim.x) c += mask[i] ? 1 : 0;
  c = block_merge(c, smem);
  if (threadIdx.x == 0) *n_sel = c;
}

// loss = T^2 * sum(row_loss) / n, 0 when n == 0 (one block, fixed order: deterministic).
__global__ void kd_loss_sum_kernel(const float* __restrict__ row_loss, int64_t n_rows, const int* __restrict__ n_sel,
                                   float t2, float* __restrict__ loss) {
  __shared__ float smem[kMaxThreads / 32];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n_rows; i += blockDim.x) acc += row_loss[i];
  acc = block_merge(acc, smem);
  if (threadIdx.x == 0) {
    const int n = n_sel != nullptr ? *n_sel : static_cast<int>(n_rows);
    *loss = n > 0 ? t2 * acc / static_cast<float>(n) : 0.0f;
  }
}

int threads_for(int64_t V) {
  int th = 32;
  while (th < kMaxThreads && th * 8 < V) th <<= 1;
  return th;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> kd_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& mask, double temperature,
                                                bool need_grad) {
  kd_loss_check_inputs(student, teacher, mask, temperature);
  TORCH_CHECK(student.is_cuda(), "l2kd::kd_loss (CUDA): student_logits must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t Vs = student.size(-1), Vt = teacher.size(-1);
  const at::Tensor s2 = student.contiguous().view({-1, Vs});
  const at::Tensor t2 = teacher.contiguous().view({-1, Vt});
  const int64_t N = s2.size(0);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "l2kd::kd_loss (CUDA): too many rows");
  at::Tensor mask_c;
  if (mask.has_value()) mask_c = mask->contiguous();

  at::Tensor grad = need_grad ? at::empty(student.sizes(), student.options().memory_format(at::MemoryFormat::Contiguous))
                              : at::empty({0}, student.options());
  at::Tensor loss = at::empty({}, student.options().dtype(at::kFloat));
  if (N == 0) {
    loss.zero_();
    return {loss, grad};
  }
  at::Tensor row_loss = at::empty({N}, student.options().dtype(at::kFloat));
  at::Tensor n_sel;
  const bool* mask_ptr = nullptr;
  int* n_ptr = nullptr;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (mask_c.defined()) {
    n_sel = at::empty({1}, student.options().dtype(at::kInt));
    mask_ptr = mask_c.data_ptr<bool>();
    n_ptr = n_sel.data_ptr<int>();
    kd_loss_count_kernel<<<1, kMaxThreads, 0, stream>>>(mask_ptr, N, n_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const float T = static_cast<float>(temperature);
  const int threads = threads_for(Vs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_loss_cuda", [&] {
    kd_loss_rows_kernel<scalar_t><<<static_cast<unsigned>(N), threads, 0, stream>>>(
        s2.data_ptr<scalar_t>(), t2.data_ptr<scalar_t>(), mask_ptr, n_ptr, N, Vs, Vt, 1.0f / T, T, need_grad,
        need_grad ? grad.data_ptr<scalar_t>() : nullptr, row_loss.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  kd_loss_sum_kernel<<<1, kMaxThreads, 0, stream>>>(row_loss.data_ptr<float>(), N, n_ptr, T * T,
                                                    loss.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, grad};
}

}  // namespace l2kd

TORCH_LIBRARY_IMPL(l2kd, CUDA, m) { m.impl("kd_loss", &l2kd::kd_loss_cuda); }
