// Fused heavy-ball step, in place:
//   d = flags[slot] ? fallback : direction
//   v = (momentum * v) - (lr * d);   param = param + v
// float32/float64: every operation in that dtype (lr, momentum passed already
// rounded to it). float16: loads widened to float32, all arithmetic in
// float32 (param gets the unrounded float32 v), each result rounded on store.
// Build with --fmad=false so that no multiply-add is contracted.
#include <cuda_fp16.h>

template <typename T>
__device__ __forceinline__ void momentum_body(T* param, T* velocity,
                                              const T* direction,
                                              const T* fallback,
                                              const int* flags, long long n,
                                              int n_flags, int slot, T lr,
                                              T momentum) {
  const T* d = (slot >= 0 && slot < n_flags && flags[slot]) ? fallback
                                                            : direction;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    T v = momentum * velocity[i] - lr * d[i];
    velocity[i] = v;
    param[i] = param[i] + v;
  }
}

extern "C" __global__ void momentum_update_f16(
    __half* param /* [n] */, __half* velocity /* [n] */,
    const __half* direction /* [n] */, const __half* fallback /* [n] */,
    const int* flags /* [n_flags] */, long long n, int n_flags, int slot,
    float lr, float momentum) {
  const __half* d = (slot >= 0 && slot < n_flags && flags[slot]) ? fallback
                                                                 : direction;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    float v = momentum * __half2float(velocity[i]) - lr * __half2float(d[i]);
    velocity[i] = __float2half_rn(v);
    param[i] = __float2half_rn(__half2float(param[i]) + v);
  }
}

extern "C" __global__ void momentum_update_f32(
    float* param /* [n] */, float* velocity /* [n] */,
    const float* direction /* [n] */, const float* fallback /* [n] */,
    const int* flags /* [n_flags] */, long long n, int n_flags, int slot,
    float lr, float momentum) {
  momentum_body(param, velocity, direction, fallback, flags, n, n_flags, slot,
                lr, momentum);
}

extern "C" __global__ void momentum_update_f64(
    double* param /* [n] */, double* velocity /* [n] */,
    const double* direction /* [n] */, const double* fallback /* [n] */,
    const int* flags /* [n_flags] */, long long n, int n_flags, int slot,
    double lr, double momentum) {
  momentum_body(param, velocity, direction, fallback, flags, n, n_flags, slot,
                lr, momentum);
}
