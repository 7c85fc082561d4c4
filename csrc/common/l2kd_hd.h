// Shared macro for arithmetic that both the CPU and the CUDA kernels include.
// Functions marked L2KD_HD compile as __host__ __device__ under nvcc and as
// plain inline functions under the host compiler, so the CPU tests exercise
// the very arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define L2KD_HD __host__ __device__ __forceinline__
#else
#define L2KD_HD inline
#endif
