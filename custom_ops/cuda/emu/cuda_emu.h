// Host-thread emulation of the small CUDA subset that tt_kernels.cu uses, so that the kernels'
// logic (indexing, block-wide phases, grid-stride loops, workspace carving, error reporting)
// can be tested on machines without a GPU: `make -C custom_ops/cuda emu` compiles
// tt_kernels.cu with g++ and -DTT_CUDA_EMULATION against this header.
//
// Every CUDA thread of a block is a real OS thread and __syncthreads() is a real barrier, so
// a missing barrier shows up as a race and a barrier that not every thread reaches shows up
// as a deadlock (reported and aborted after a timeout). Blocks run one after another; dynamic
// shared memory is refilled with NaN before each block so that reading shared memory that
// was never written poisons the results. "Device" memory is host memory and streams are
// ignored. What this cannot show: warp-level timing, real occupancy and shared-memory limits,
// and CUB (replaced by std::stable_sort and std::partial_sum in tt_kernels.cu).
#ifndef TT_KERAS_CUSTOM_OPS_CUDA_EMU_CUDA_EMU_H_
#define TT_KERAS_CUSTOM_OPS_CUDA_EMU_CUDA_EMU_H_

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef void* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace tt_emu {

// A small emulated device: few multiprocessors keep the grids small (fast to emulate) while
// still giving several blocks, so grid-stride loops and block partitions are exercised.
constexpr int kNumSms = 3;
constexpr int kMaxSharedPerBlock = 227 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;

inline thread_local dim3 t_thread_idx;
inline thread_local dim3 t_block_idx;
inline dim3 g_block_dim;
inline dim3 g_grid_dim;
inline unsigned char* g_dynamic_smem = nullptr;
inline std::mutex g_atomic_mutex;

class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const unsigned long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(120), [&] { return generation_ != generation; })) {
      std::fprintf(stderr,
                   "tt_emu: __syncthreads() deadlock: %u of %u threads of block %u arrived "
                   "(a barrier inside divergent control flow?)\n",
                   arrived_, count_, t_block_idx.x);
      std::abort();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned count_;
  unsigned arrived_ = 0;
  unsigned long generation_ = 0;
};

inline Barrier* g_barrier = nullptr;

template <typename... KArgs, typename... Args>
cudaError_t Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                   Args... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel argument count");
  if (grid.x == 0 || block.x == 0 || block.x > kMaxThreadsPerBlock || grid.y != 1 || grid.z != 1 ||
      block.y != 1 || block.z != 1 || smem_bytes > kMaxSharedPerBlock) {
    return cudaErrorInvalidConfiguration;
  }
  // Every kernel strides by blockDim.x, so a block may be emulated with fewer threads than
  // it was launched with (TT_EMU_MAX_BLOCK_THREADS): faster, and each thread then walks its
  // loops several times. The configuration above is still checked as launched.
  if (const char* cap = std::getenv("TT_EMU_MAX_BLOCK_THREADS")) {
    const long n = std::strtol(cap, nullptr, 10);
    if (n > 0 && static_cast<unsigned>(n) < block.x) block.x = static_cast<unsigned>(n);
  }
  const std::tuple<std::decay_t<KArgs>...> kernel_args(static_cast<KArgs>(args)...);
  std::vector<float> smem((smem_bytes + sizeof(float) - 1) / sizeof(float) + 4);
  g_dynamic_smem = reinterpret_cast<unsigned char*>(smem.data());
  g_block_dim = block;
  g_grid_dim = grid;
  Barrier barrier(block.x);
  g_barrier = &barrier;
  std::vector<std::thread> threads;
  threads.reserve(block.x);
  for (unsigned tid = 0; tid < block.x; ++tid) {
    threads.emplace_back([&, tid] {
      t_thread_idx = dim3(tid);
      for (unsigned b = 0; b < grid.x; ++b) {
        t_block_idx = dim3(b);
        if (tid == 0) {
          std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
        }
        barrier.Wait();
        std::apply(kernel, kernel_args);
        barrier.Wait();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  g_barrier = nullptr;
  g_dynamic_smem = nullptr;
  return cudaSuccess;
}

}  // namespace tt_emu

#define threadIdx (::tt_emu::t_thread_idx)
#define blockIdx (::tt_emu::t_block_idx)
#define blockDim (::tt_emu::g_block_dim)
#define gridDim (::tt_emu::g_grid_dim)

inline void __syncthreads() { ::tt_emu::g_barrier->Wait(); }

inline float atomicAdd(float* address, float value) {
  std::lock_guard<std::mutex> lock(::tt_emu::g_atomic_mutex);
  const float old = *address;
  *address = old + value;
  return old;
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  std::lock_guard<std::mutex> lock(::tt_emu::g_atomic_mutex);
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  std::lock_guard<std::mutex> lock(::tt_emu::g_atomic_mutex);
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error (emulated)";
    case cudaErrorInvalidValue:
      return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration:
      return "invalid launch configuration (emulated)";
    default:
      return "unknown error (emulated)";
  }
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = ::tt_emu::kNumSms;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = ::tt_emu::kMaxSharedPerBlock;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int value) {
  return value <= ::tt_emu::kMaxSharedPerBlock ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*,
                                                                 int threads, size_t smem) {
  if (threads <= 0 || smem > static_cast<size_t>(::tt_emu::kMaxSharedPerBlock)) {
    return cudaErrorInvalidValue;
  }
  // Two blocks per SM keep the emulated grids small.
  *blocks = 2;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                                   cudaStream_t) {
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

#endif  // TT_KERAS_CUSTOM_OPS_CUDA_EMU_CUDA_EMU_H_
