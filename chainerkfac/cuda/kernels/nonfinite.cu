// flags[slot] = 1 if any x[i] is inf or NaN (never cleared here). A thread
// that finds one sets the flag and stops; float16 is checked via float32,
// which keeps inf and NaN.
#include <cuda_fp16.h>

__device__ __forceinline__ bool finite_value(float v) { return isfinite(v); }
__device__ __forceinline__ bool finite_value(double v) { return isfinite(v); }
__device__ __forceinline__ bool finite_value(__half v) {
  return isfinite(__half2float(v));
}

template <typename T>
__device__ __forceinline__ void flag_body(const T* x, long long n, int* flags,
                                          int n_flags, int slot) {
  if (slot < 0 || slot >= n_flags) return;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    if (!finite_value(x[i])) {
      atomicOr(flags + slot, 1);
      return;
    }
  }
}

extern "C" __global__ void flag_nonfinite_f16(const __half* x /* [n] */,
                                              long long n,
                                              int* flags /* [n_flags] */,
                                              int n_flags, int slot) {
  flag_body(x, n, flags, n_flags, slot);
}

extern "C" __global__ void flag_nonfinite_f32(const float* x /* [n] */,
                                              long long n,
                                              int* flags /* [n_flags] */,
                                              int n_flags, int slot) {
  flag_body(x, n, flags, n_flags, slot);
}

extern "C" __global__ void flag_nonfinite_f64(const double* x /* [n] */,
                                              long long n,
                                              int* flags /* [n_flags] */,
                                              int n_flags, int slot) {
  flag_body(x, n, flags, n_flags, slot);
}
