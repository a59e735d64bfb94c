// Host side of the TT embedding-bag kernels: argument checks, workspace layout, launch
// configuration and the launch sequence (the device code and its design notes are in
// tt_kernels_device.cuh). No TensorFlow header: TF's headers do not compile under nvcc 13,
// so the OpKernel (custom_ops/cc/kernels/tt_embedding_bag_gpu.cc) reaches this file only
// through the C launchers of tt_kernels.h.
//
// Built with -DTT_CUDA_EMULATION by g++ instead, it runs on host threads (emu/cuda_emu.h):
// that is how the logic is tested without a GPU.
#ifdef TT_CUDA_EMULATION
#include <algorithm>
#include <numeric>
#include <vector>

#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#endif

#include <stdint.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

#include "tt_kernels.h"
#include "tt_kernels_device.cuh"

namespace tt_cuda {
namespace {

thread_local std::string g_last_error;
size_t g_smem_budget = 0;  // 0: the device's opt-in maximum

// Staging a core slice pays off only while blocks stay small enough for several to share
// an SM; above this the slices are read straight from global memory (L1/L2-cached).
constexpr size_t kStageSmemLimit = 48 * 1024;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr int kElementwiseThreads = 256;
constexpr size_t kAlign = 256;

int Fail(int status, const std::string& message) {
  g_last_error = message;
  return status;
}

int CudaFail(cudaError_t err, const char* what) {
  return Fail(TT_CUDA_ERROR_CUDA, std::string(what) + ": " + cudaGetErrorString(err));
}

#define TT_CUDA_TRY(expr)                                        \
  do {                                                           \
    const cudaError_t tt_err_ = (expr);                          \
    if (tt_err_ != cudaSuccess) return CudaFail(tt_err_, #expr); \
  } while (0)

#define TT_RETURN_IF_ERROR(expr)                     \
  do {                                               \
    const int tt_status_ = (expr);                   \
    if (tt_status_ != TT_CUDA_OK) return tt_status_; \
  } while (0)

template <typename... KArgs, typename... Args>
cudaError_t Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args... args) {
#ifdef TT_CUDA_EMULATION
  (void)stream;
  return ::tt_emu::Launch(kernel, grid, block, smem, args...);
#else
  // cudaLaunchKernel rather than <<<>>> so that one helper serves every kernel template.
  std::tuple<KArgs...> converted(static_cast<KArgs>(args)...);
  return std::apply(
      [&](auto&... a) {
        void* argv[] = {static_cast<void*>(&a)...};
        return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, argv, smem,
                                stream);
      },
      converted);
#endif
}

struct DeviceInfo {
  int sms = 0;
  size_t max_smem = 0;  // opt-in maximum dynamic shared memory per block
};

int GetDeviceInfo(DeviceInfo* info) {
  int device = 0, sms = 0, smem = 0;
  TT_CUDA_TRY(cudaGetDevice(&device));
  TT_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  TT_CUDA_TRY(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  info->sms = sms > 0 ? sms : 1;
  info->max_smem = static_cast<size_t>(smem);
  return TT_CUDA_OK;
}

int ElementwiseGrid(int64_t work, const DeviceInfo& dev) {
  const int64_t blocks = (work + kElementwiseThreads - 1) / kElementwiseThreads;
  const int64_t cap = static_cast<int64_t>(dev.sms) * 32;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Hands out aligned sub-buffers of the workspace. With a null base it only measures, so the
// size query and the launch share one layout.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(int64_t count) {
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count > 0 ? count : 0) * sizeof(T);
    return p;
  }
  // Null for zero bytes: callers test the pointer to see whether the buffer exists.
  void* TakeBytes(size_t bytes) {
    if (bytes == 0) return nullptr;
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    void* p = base_ ? base_ + offset_ : nullptr;
    offset_ += bytes;
    return p;
  }
  size_t size() const { return offset_ + kAlign; }  // slack for an unaligned base

 private:
  char* base_;
  size_t offset_ = 0;
};

void* AlignUp(void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<void*>((v + kAlign - 1) / kAlign * kAlign);
}

// ------------------------------------------------------------------------------------------
// Sorting and scanning: CUB on the device, the standard library under emulation.
// ------------------------------------------------------------------------------------------

int BitsFor(uint64_t max_key) {
  int bits = 1;
  while (bits < 64 && (max_key >> bits) != 0) ++bits;
  return bits;
}

template <typename TKey>
cudaError_t SortPairs(void* temp, size_t& temp_bytes, const TKey* keys_in, TKey* keys_out,
                      const int32_t* values_in, int32_t* values_out, int n, int end_bit,
                      cudaStream_t stream) {
#ifdef TT_CUDA_EMULATION
  (void)stream;
  if (temp == nullptr) {
    temp_bytes = 4096;  // nonzero, so that the carving of the temp storage is exercised
    return cudaSuccess;
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (int i = 0; i < n; ++i) {
    if (end_bit < 64 && (static_cast<uint64_t>(keys_in[i]) >> end_bit) != 0) {
      return cudaErrorInvalidValue;  // a key the radix sort would have truncated
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return keys_in[a] < keys_in[b]; });
  for (int i = 0; i < n; ++i) {
    keys_out[i] = keys_in[order[i]];
    values_out[i] = values_in[order[i]];
  }
  return cudaSuccess;
#else
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out,
                                         n, 0, end_bit, stream);
#endif
}

cudaError_t InclusiveSum(void* temp, size_t& temp_bytes, const uint64_t* in, uint64_t* out, int n,
                         cudaStream_t stream) {
#ifdef TT_CUDA_EMULATION
  (void)stream;
  if (temp == nullptr) {
    temp_bytes = 512;
    return cudaSuccess;
  }
  std::partial_sum(in, in + n, out);
  return cudaSuccess;
#else
  return cub::DeviceScan::InclusiveSum(temp, temp_bytes, in, out, n, stream);
#endif
}

// ------------------------------------------------------------------------------------------
// Deduplication
// ------------------------------------------------------------------------------------------

struct DedupBuffers {
  int64_t* unique_ids = nullptr;
  int32_t* inverse = nullptr;
  int32_t* sorted_pos = nullptr;
  uint64_t* slot_scan = nullptr;   // per sorted position: slot + 1 (low 32 bits)
  int32_t* group_start = nullptr;  // null: not needed
  DedupCounts* counts = nullptr;
};

// Lays out (and, with a base, runs) the deduplication of `ids`. unique_ids/inverse come from
// the caller when given, else from the workspace. group_divisor 0: no groups.
template <typename TIdx, typename TKey>
int Dedup(Carver& ws, bool run, const TIdx* ids, int64_t nnz, int64_t num_rows,
          const int64_t* splits, int64_t num_splits, uint64_t group_divisor, int64_t* caller_unique,
          int32_t* caller_inverse, TTCudaErrorInfo* error, const DeviceInfo& dev,
          cudaStream_t stream, DedupBuffers* out) {
  const int n = static_cast<int>(nnz);
  const int end_bit = BitsFor(static_cast<uint64_t>(num_rows));
  TKey* keys = ws.Take<TKey>(nnz);
  TKey* sorted = ws.Take<TKey>(nnz);
  int32_t* positions = ws.Take<int32_t>(nnz);
  out->sorted_pos = ws.Take<int32_t>(nnz);
  uint64_t* flags = ws.Take<uint64_t>(nnz);
  uint64_t* scan = ws.Take<uint64_t>(nnz);
  out->slot_scan = scan;
  out->unique_ids = caller_unique ? caller_unique : ws.Take<int64_t>(nnz);
  out->inverse = caller_inverse ? caller_inverse : ws.Take<int32_t>(nnz);
  if (group_divisor != 0) out->group_start = ws.Take<int32_t>(nnz + 1);
  out->counts = ws.Take<DedupCounts>(1);
  size_t sort_bytes = 0, scan_bytes = 0;
  TT_CUDA_TRY(SortPairs<TKey>(nullptr, sort_bytes, keys, sorted, positions, out->sorted_pos, n,
                              end_bit, stream));
  TT_CUDA_TRY(InclusiveSum(nullptr, scan_bytes, flags, scan, n, stream));
  // Never zero bytes: CUB takes a null temp pointer as a size query and would do nothing.
  size_t temp_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
  if (temp_bytes == 0) temp_bytes = 1;
  const size_t temp_capacity = temp_bytes;
  void* temp = ws.TakeBytes(temp_capacity);
  if (!run) return TT_CUDA_OK;

  const dim3 block(kElementwiseThreads);
  const int64_t prep_work = nnz > num_splits ? nnz : num_splits;
  TT_CUDA_TRY(Launch(PrepareKeysKernel<TIdx, TKey>, dim3(ElementwiseGrid(prep_work, dev)), block, 0,
                     stream, ids, nnz, num_rows, keys, positions, splits, num_splits, error));
  TT_CUDA_TRY(Launch(FinalizeErrorKernel<TIdx>, dim3(1), dim3(1), 0, stream, ids, splits, error));
  if (nnz == 0) return TT_CUDA_OK;
  temp_bytes = temp_capacity;
  TT_CUDA_TRY(SortPairs<TKey>(temp, temp_bytes, keys, sorted, positions, out->sorted_pos, n,
                              end_bit, stream));
  TT_CUDA_TRY(Launch(MarkKernel<TKey>, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream, sorted,
                     nnz, group_divisor != 0 ? group_divisor : 1, flags));
  temp_bytes = temp_capacity;
  TT_CUDA_TRY(InclusiveSum(temp, temp_bytes, flags, scan, n, stream));
  TT_CUDA_TRY(Launch(ScatterKernel<TKey>, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream, sorted,
                     out->sorted_pos, flags, scan, nnz, out->unique_ids, out->inverse,
                     out->group_start, out->counts));
  return TT_CUDA_OK;
}

// ------------------------------------------------------------------------------------------
// Argument checks and the chain's launch plan
// ------------------------------------------------------------------------------------------

struct Shape {
  int k = 0;
  int64_t p[kMaxCores] = {0};
  int32_t q[kMaxCores] = {0};
  int32_t r[kMaxCores + 1] = {0};
  int64_t num_rows = 0;
  int32_t dim = 0;
};

int CheckShape(const TTCudaShape& s, Shape* out) {
  const int k = s.num_cores;
  if (k < 2 || k > kMaxCores) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                "num_cores must be 2, 3 or 4, got " + std::to_string(k));
  }
  out->k = k;
  if (s.ranks[0] != 1 || s.ranks[k] != 1) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "ranks[0] and ranks[num_cores] must be 1");
  }
  int64_t dim = 1, rows = 1;
  bool rows_saturated = false;
  for (int t = 0; t < k; ++t) {
    if (s.p[t] < 1 || s.q[t] < 1 || s.ranks[t] < 1 || s.ranks[t + 1] < 1) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                  "core " + std::to_string(t) + ": p, q and ranks must be positive");
    }
    // Each partial product must fit the kernels' 32-bit in-block indexing.
    if (static_cast<int64_t>(s.ranks[t]) * s.q[t] * s.ranks[t + 1] > (1 << 28)) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                  "core " + std::to_string(t) + ": slice r*q*r exceeds 2^28 floats");
    }
    dim *= s.q[t];
    if (dim > (1 << 24)) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "D = prod(q) exceeds 2^24");
    }
    if (dim * s.ranks[t + 1] > (1 << 28)) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                  "partial product after core " + std::to_string(t) + " exceeds 2^28 floats");
    }
    if (!rows_saturated) {
      if (rows > std::numeric_limits<int64_t>::max() / s.p[t]) {
        rows_saturated = true;
      } else {
        rows *= s.p[t];
      }
    }
    out->p[t] = s.p[t];
    out->q[t] = s.q[t];
    out->r[t] = s.ranks[t];
  }
  out->r[k] = 1;
  out->dim = static_cast<int32_t>(dim);
  if (s.num_rows < 1) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "num_rows must be >= 1");
  }
  if (!rows_saturated && rows < s.num_rows) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                "prod(p) = " + std::to_string(rows) +
                    " cannot hold num_rows = " + std::to_string(s.num_rows));
  }
  out->num_rows = s.num_rows;
  return TT_CUDA_OK;
}

// 2^31 - 2: positions, slots and group_start[num_groups] must fit int32.
constexpr int64_t kMaxNnz = (int64_t{1} << 31) - 2;

int CheckLookup(const TTCudaLookup* lk, bool need_pointers, Shape* shape) {
  if (lk == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "lookup is NULL");
  TT_RETURN_IF_ERROR(CheckShape(lk->shape, shape));
  if (lk->index_type != TT_CUDA_INDEX_INT32 && lk->index_type != TT_CUDA_INDEX_INT64) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "index_type must be INT32 or INT64");
  }
  if (lk->combiner < TT_CUDA_COMBINER_NONE || lk->combiner > TT_CUDA_COMBINER_SQRTN) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "unknown combiner");
  }
  if (lk->nnz < 0 || lk->nnz > kMaxNnz) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                "nnz must be in [0, 2^31 - 2], got " + std::to_string(lk->nnz));
  }
  const bool pooled = lk->combiner != TT_CUDA_COMBINER_NONE;
  if (pooled && (lk->num_bags < 0 || lk->num_bags > kMaxNnz)) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "num_bags must be in [0, 2^31 - 2]");
  }
  if (!pooled && lk->weights != nullptr && need_pointers) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "weights need a pooling combiner");
  }
  if (need_pointers) {
    if (lk->nnz > 0) {
      if (lk->indices == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "indices is NULL");
      for (int t = 0; t < shape->k; ++t) {
        if (lk->cores[t] == nullptr) {
          return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cores[" + std::to_string(t) + "] is NULL");
        }
      }
    }
    if (pooled && lk->row_splits == nullptr) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "row_splits is NULL");
    }
  }
  return TT_CUDA_OK;
}

struct ChainPlan {
  ChainParams params;
  int threads = 0;
  int blocks = 0;
  size_t smem = 0;
  size_t global_scratch_bytes = 0;
};

template <bool kBackward>
int PlanChain(const Shape& s, int64_t nnz, const DeviceInfo& dev, ChainPlan* plan) {
  ChainParams& c = plan->params;
  std::memset(&c, 0, sizeof(c));
  const int k = s.k, top = k - 2;
  c.k = k;
  c.dim = s.dim;
  c.num_rows = s.num_rows;
  int64_t suffix = 1;
  for (int t = k - 1; t >= 0; --t) {
    c.suffix[t] = suffix;
    // Saturate: a prefix of a valid id is then 0, which is still a correct prefix.
    suffix = suffix > std::numeric_limits<int64_t>::max() / s.p[t]
                 ? std::numeric_limits<int64_t>::max()
                 : suffix * s.p[t];
  }
  for (int t = 0; t < k; ++t) {
    c.p[t] = s.p[t];
    c.q[t] = s.q[t];
  }
  for (int t = 0; t <= k; ++t) c.r[t] = s.r[t];
  int64_t offset = 0, max_outputs = 0, stage_floats = 0;
  int32_t rows = 1;
  for (int t = 0; t <= top; ++t) {
    rows *= s.q[t];
    c.rows[t] = rows;
    c.ld[t] = s.r[t + 1] | 1;
    c.off_p[t] = static_cast<int32_t>(offset);
    offset += static_cast<int64_t>(rows) * c.ld[t];
    if (kBackward) {
      c.off_dp[t] = static_cast<int32_t>(offset);
      offset += static_cast<int64_t>(rows) * c.ld[t];
    }
    const int64_t outputs = static_cast<int64_t>(rows) * s.r[t + 1];
    max_outputs = outputs > max_outputs ? outputs : max_outputs;
    if (t >= 1) {
      c.ldg[t] = (s.q[t] * s.r[t + 1]) | 1;
      const int64_t f = static_cast<int64_t>(s.r[t]) * c.ldg[t];
      stage_floats = f > stage_floats ? f : stage_floats;
    }
  }
  const int64_t partial_floats = offset;
  size_t budget = dev.max_smem;
  if (g_smem_budget != 0 && g_smem_budget < budget) budget = g_smem_budget;
  const size_t partial_bytes = static_cast<size_t>(partial_floats) * sizeof(float);
  const size_t staged_bytes = static_cast<size_t>(partial_floats + stage_floats) * sizeof(float);
  const size_t stage_limit = budget < kStageSmemLimit ? budget : kStageSmemLimit;
  bool in_global = false;
  if (stage_floats > 0 && staged_bytes <= stage_limit) {
    c.stage = 1;
    c.off_stage = static_cast<int32_t>(partial_floats);
    c.scratch_floats = partial_floats + stage_floats;
  } else {
    c.stage = 0;
    c.scratch_floats = partial_floats;
    in_global = partial_bytes > budget;
  }
  plan->threads = max_outputs <= 128 ? 128 : kChainMaxThreads;

  // Per-group and per-id costs (multiply-adds plus a fixed overhead for the barriers), for
  // the block partition.
  const int t_last = k - 1;
  c.cost_id = static_cast<int64_t>(s.dim) * s.r[t_last] * (kBackward ? 3 : 1) + 32;
  c.cost_group =
      (top == 0 ? static_cast<int64_t>(s.q[0]) * s.r[1]
                : static_cast<int64_t>(c.rows[top - 1]) * s.r[top] * s.q[top] * s.r[top + 1]) *
          (kBackward ? 3 : 1) +
      256;

  // At most one group per distinct id, and per distinct leading-(k-1)-digit prefix, plus
  // the slot of out-of-range ids.
  int64_t prefixes = 1;
  for (int t = 0; t <= top && prefixes <= nnz; ++t) {
    prefixes = s.p[t] > nnz ? nnz + 1 : prefixes * s.p[t];
  }
  int64_t max_groups = (prefixes < nnz ? prefixes : nnz) + 1;
  auto kernel = ChainKernel<kBackward>;
  int per_sm = 2;
  if (in_global) {
    plan->smem = 0;
  } else {
    plan->smem = static_cast<size_t>(c.scratch_floats) * sizeof(float);
    if (plan->smem > kDefaultDynamicSmem) {
      TT_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(plan->smem)));
    }
    TT_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, reinterpret_cast<const void*>(kernel), plan->threads, plan->smem));
    if (per_sm < 1) {
      return Fail(TT_CUDA_ERROR_CUDA, "the chain kernel does not fit on this device");
    }
  }
  const int64_t max_blocks = static_cast<int64_t>(dev.sms) * per_sm;
  plan->blocks = static_cast<int>(max_groups < max_blocks ? max_groups : max_blocks);
  plan->global_scratch_bytes =
      in_global ? static_cast<size_t>(plan->blocks) * c.scratch_floats * sizeof(float) : 0;
  return TT_CUDA_OK;
}

// ------------------------------------------------------------------------------------------
// Forward and backward
// ------------------------------------------------------------------------------------------

// What a cached lookup adds to the plain one: the cache, and the forward's extra outputs.
struct CachedForwardOut {
  const TTCudaCache* cache = nullptr;  // null: a plain lookup
  int32_t* slots = nullptr;            // [nnz]
  int64_t* num_hits = nullptr;         // one int64
};

// Checks the cache ids on the device (the first bad slot goes to the error info).
int LaunchCacheCheck(const TTCudaCache& cache, int64_t num_rows, TTCudaErrorInfo* error,
                     const DeviceInfo& dev, cudaStream_t stream) {
  if (cache.size == 0) return TT_CUDA_OK;
  TT_CUDA_TRY(Launch(CheckCacheKernel, dim3(ElementwiseGrid(cache.size, dev)),
                     dim3(kElementwiseThreads), 0, stream, cache.ids, cache.size, num_rows, error));
  TT_CUDA_TRY(Launch(FinalizeCacheErrorKernel, dim3(1), dim3(1), 0, stream, cache.ids, error));
  return TT_CUDA_OK;
}

template <typename TIdx, typename TKey>
int ForwardImpl(const TTCudaLookup& lk, const Shape& s, const CachedForwardOut& cached,
                float* output, void* workspace, size_t* workspace_bytes, TTCudaErrorInfo* error,
                cudaStream_t stream) {
  const bool run = workspace != nullptr;
  DeviceInfo dev;
  TT_RETURN_IF_ERROR(GetDeviceInfo(&dev));
  const bool pooled = lk.combiner != TT_CUDA_COMBINER_NONE;
  const int64_t nnz = lk.nnz;
  const int64_t num_splits = pooled ? lk.num_bags + 1 : 0;
  const int64_t out_rows = pooled ? lk.num_bags : nnz;
  const TIdx* ids = static_cast<const TIdx*>(lk.indices);

  ChainPlan plan;
  TT_RETURN_IF_ERROR(PlanChain<false>(s, nnz, dev, &plan));
  const TTCudaCache* cache = cached.cache;
  // Layout: distinct rows, their cache slots (cached lookups), chain scratch, deduplication.
  auto layout = [&](Carver& ws, bool launch, float** rows, int32_t** unique_slot, float** scratch,
                    DedupBuffers* dd) {
    *rows = ws.Take<float>(nnz * s.dim);
    *unique_slot = cache ? ws.Take<int32_t>(nnz) : nullptr;
    *scratch = static_cast<float*>(ws.TakeBytes(plan.global_scratch_bytes));
    return Dedup<TIdx, TKey>(ws, launch, ids, nnz, s.num_rows, lk.row_splits, num_splits,
                             static_cast<uint64_t>(s.p[s.k - 1]), nullptr, nullptr, error, dev,
                             stream, dd);
  };
  float *rows, *scratch;
  int32_t* unique_slot;
  DedupBuffers dd;
  {
    Carver measure(nullptr);
    TT_RETURN_IF_ERROR(layout(measure, false, &rows, &unique_slot, &scratch, &dd));
    if (!run) {
      *workspace_bytes = measure.size();
      return TT_CUDA_OK;
    }
    if (*workspace_bytes < measure.size()) {
      return Fail(TT_CUDA_ERROR_WORKSPACE_TOO_SMALL,
                  "workspace has " + std::to_string(*workspace_bytes) + " bytes, needs " +
                      std::to_string(measure.size()));
    }
  }
  if (out_rows > 0 && output == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "output is NULL");
  }
  if (cache && (cached.num_hits == nullptr || (nnz > 0 && cached.slots == nullptr))) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "slots or num_hits is NULL");
  }

  TT_CUDA_TRY(cudaMemsetAsync(error, 0xff, sizeof(TTCudaErrorInfo), stream));
  if (cache) {
    TT_RETURN_IF_ERROR(LaunchCacheCheck(*cache, s.num_rows, error, dev, stream));
    TT_CUDA_TRY(cudaMemsetAsync(cached.num_hits, 0, sizeof(int64_t), stream));
  }
  Carver ws(AlignUp(workspace));
  TT_RETURN_IF_ERROR(layout(ws, true, &rows, &unique_slot, &scratch, &dd));
  if (nnz == 0) {
    if (out_rows > 0) {
      TT_CUDA_TRY(cudaMemsetAsync(output, 0, out_rows * s.dim * sizeof(float), stream));
    }
    return TT_CUDA_OK;
  }

  ChainParams& c = plan.params;
  for (int t = 0; t < s.k; ++t) c.cores[t] = lk.cores[t];
  c.global_scratch = plan.global_scratch_bytes > 0 ? scratch : nullptr;
  c.unique_ids = dd.unique_ids;
  c.group_start = dd.group_start;
  c.counts = dd.counts;
  c.rows_out = rows;
  TT_CUDA_TRY(
      Launch(ChainKernel<false>, dim3(plan.blocks), dim3(plan.threads), plan.smem, stream, c));

  const dim3 block(kElementwiseThreads);
  const float* cache_rows = cache ? cache->rows : nullptr;
  if (cache) {
    TT_CUDA_TRY(Launch(UniqueSlotKernel, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream,
                       dd.unique_ids, dd.counts, cache->ids, cache->size, s.num_rows, unique_slot));
    TT_CUDA_TRY(Launch(PositionSlotsKernel, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream,
                       dd.inverse, unique_slot, nnz, cached.slots,
                       reinterpret_cast<unsigned long long*>(cached.num_hits)));
  }
  if (pooled) {
    if (out_rows > 0) {
      TT_CUDA_TRY(Launch(PoolKernel, dim3(ElementwiseGrid(out_rows * s.dim, dev)), block, 0, stream,
                         rows, dd.inverse, lk.row_splits, lk.num_bags, nnz, lk.weights, lk.combiner,
                         s.dim, unique_slot, cache_rows, output));
    }
  } else {
    TT_CUDA_TRY(Launch(GatherKernel, dim3(ElementwiseGrid(nnz * s.dim, dev)), block, 0, stream,
                       rows, dd.inverse, nnz, s.dim, unique_slot, cache_rows, output));
  }
  return TT_CUDA_OK;
}

// What a cached backward adds: the cache, where the count of slots hit goes, and, for the
// second call (copy), where the cache rows' gradient is copied from the workspace.
struct CachedBackwardOut {
  const TTCudaCache* cache = nullptr;  // null: a plain backward
  int64_t* num_hit_slots = nullptr;
  bool copy = false;
  int64_t copy_count = 0;
  int64_t* hit_slots = nullptr;
  float* hit_values = nullptr;
};

template <typename TIdx, typename TKey>
int BackwardImpl(const TTCudaLookup& lk, const Shape& s, const CachedBackwardOut& cached,
                 const float* grad, float* const* core_grads, void* workspace,
                 size_t* workspace_bytes, TTCudaErrorInfo* error, cudaStream_t stream) {
  const bool run = workspace != nullptr;
  DeviceInfo dev;
  TT_RETURN_IF_ERROR(GetDeviceInfo(&dev));
  const bool pooled = lk.combiner != TT_CUDA_COMBINER_NONE;
  const int64_t nnz = lk.nnz;
  const int64_t num_splits = pooled ? lk.num_bags + 1 : 0;
  const int64_t out_rows = pooled ? lk.num_bags : nnz;
  const TIdx* ids = static_cast<const TIdx*>(lk.indices);

  ChainPlan plan;
  TT_RETURN_IF_ERROR(PlanChain<true>(s, nnz, dev, &plan));
  const TTCudaCache* cache = cached.cache;
  // The cache rows' gradient, compacted: distinct cached ids' slots and rows, the scan that
  // places them, and its temporary storage.
  struct HitBuffers {
    int32_t* unique_slot = nullptr;
    uint64_t* flags = nullptr;
    uint64_t* scan = nullptr;
    void* scan_temp = nullptr;
    size_t scan_temp_bytes = 0;
    int64_t* slots = nullptr;
    float* values = nullptr;
  };
  // Layout: the cache gradient (cached lookups, first, so that the copy call finds it with
  // the same arithmetic), row gradients, per-position bag and coefficient, chain scratch,
  // deduplication.
  auto layout = [&](Carver& ws, bool launch, HitBuffers* hb, float** row_grads, int32_t** bag_of,
                    float** coef, float** scratch, DedupBuffers* dd) {
    if (cache) {
      hb->slots = ws.Take<int64_t>(nnz);
      hb->values = ws.Take<float>(nnz * s.dim);
      hb->unique_slot = ws.Take<int32_t>(nnz);
      hb->flags = ws.Take<uint64_t>(nnz);
      hb->scan = ws.Take<uint64_t>(nnz);
      TT_CUDA_TRY(InclusiveSum(nullptr, hb->scan_temp_bytes, hb->flags, hb->scan,
                               static_cast<int>(nnz), stream));
      if (hb->scan_temp_bytes == 0) hb->scan_temp_bytes = 1;  // see Dedup
      hb->scan_temp = ws.TakeBytes(hb->scan_temp_bytes);
    }
    *row_grads = ws.Take<float>(nnz * s.dim);
    *bag_of = pooled ? ws.Take<int32_t>(nnz) : nullptr;
    *coef = pooled ? ws.Take<float>(nnz) : nullptr;
    *scratch = static_cast<float*>(ws.TakeBytes(plan.global_scratch_bytes));
    return Dedup<TIdx, TKey>(ws, launch, ids, nnz, s.num_rows, lk.row_splits, num_splits,
                             static_cast<uint64_t>(s.p[s.k - 1]), nullptr, nullptr, error, dev,
                             stream, dd);
  };
  float *row_grads, *coef, *scratch;
  int32_t* bag_of;
  DedupBuffers dd;
  HitBuffers hb;
  {
    Carver measure(nullptr);
    TT_RETURN_IF_ERROR(layout(measure, false, &hb, &row_grads, &bag_of, &coef, &scratch, &dd));
    if (!run) {
      *workspace_bytes = measure.size();
      return TT_CUDA_OK;
    }
    if (*workspace_bytes < measure.size()) {
      return Fail(TT_CUDA_ERROR_WORKSPACE_TOO_SMALL,
                  "workspace has " + std::to_string(*workspace_bytes) + " bytes, needs " +
                      std::to_string(measure.size()));
    }
  }
  if (cached.copy) {
    // Second call of a cached backward: the first left the cache gradient in the workspace.
    Carver ws(AlignUp(workspace));
    TT_RETURN_IF_ERROR(layout(ws, false, &hb, &row_grads, &bag_of, &coef, &scratch, &dd));
    const int64_t n = cached.copy_count;
    if (n < 0 || n > nnz) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                  "num_hit_slots = " + std::to_string(n) + " is not in [0, nnz]");
    }
    if (n > 0 && (cached.hit_slots == nullptr || cached.hit_values == nullptr)) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "hit_slots or hit_values is NULL");
    }
    if (n > 0) {
      TT_CUDA_TRY(cudaMemcpyAsync(cached.hit_slots, hb.slots, n * sizeof(int64_t),
                                  cudaMemcpyDeviceToDevice, stream));
      TT_CUDA_TRY(cudaMemcpyAsync(cached.hit_values, hb.values, n * s.dim * sizeof(float),
                                  cudaMemcpyDeviceToDevice, stream));
    }
    return TT_CUDA_OK;
  }
  if (core_grads == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "core_grads is NULL");
  for (int t = 0; t < s.k; ++t) {
    if (core_grads[t] == nullptr) {
      return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "core_grads[" + std::to_string(t) + "] is NULL");
    }
  }
  if (nnz > 0 && out_rows > 0 && grad == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "grad is NULL");
  }

  if (cache && cached.num_hit_slots == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "num_hit_slots is NULL");
  }

  TT_CUDA_TRY(cudaMemsetAsync(error, 0xff, sizeof(TTCudaErrorInfo), stream));
  if (cache) {
    TT_RETURN_IF_ERROR(LaunchCacheCheck(*cache, s.num_rows, error, dev, stream));
    TT_CUDA_TRY(cudaMemsetAsync(cached.num_hit_slots, 0, sizeof(int64_t), stream));
  }
  for (int t = 0; t < s.k; ++t) {
    const size_t n = static_cast<size_t>(s.p[t]) * s.r[t] * s.q[t] * s.r[t + 1];
    TT_CUDA_TRY(cudaMemsetAsync(core_grads[t], 0, n * sizeof(float), stream));
  }
  Carver ws(AlignUp(workspace));
  TT_RETURN_IF_ERROR(layout(ws, true, &hb, &row_grads, &bag_of, &coef, &scratch, &dd));
  if (nnz == 0) return TT_CUDA_OK;

  const dim3 block(kElementwiseThreads);
  if (pooled) {
    TT_CUDA_TRY(cudaMemsetAsync(bag_of, 0xff, nnz * sizeof(int32_t), stream));
    if (lk.num_bags > 0) {
      TT_CUDA_TRY(Launch(BagScaleKernel, dim3(ElementwiseGrid(lk.num_bags, dev)), block, 0, stream,
                         lk.row_splits, lk.num_bags, nnz, lk.weights, lk.combiner, bag_of, coef));
    }
  }
  TT_CUDA_TRY(cudaMemsetAsync(row_grads, 0, nnz * s.dim * sizeof(float), stream));
  // Without bags (num_bags == 0 but nnz > 0: malformed, reported) no grad row is read.
  if (!(pooled && lk.num_bags == 0)) {
    const int64_t chunks = (nnz + kAggregateChunk - 1) / kAggregateChunk;
    TT_CUDA_TRY(Launch(AggregateGradKernel, dim3(ElementwiseGrid(chunks * s.dim, dev)), block, 0,
                       stream, grad, dd.sorted_pos, dd.slot_scan, bag_of, coef, nnz, s.dim,
                       row_grads));
  }
  if (cache) {
    // Cached ids' gradient rows go to the cache gradient, and leave the chain's input.
    TT_CUDA_TRY(Launch(UniqueSlotKernel, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream,
                       dd.unique_ids, dd.counts, cache->ids, cache->size, s.num_rows,
                       hb.unique_slot));
    TT_CUDA_TRY(Launch(HitFlagsKernel, dim3(ElementwiseGrid(nnz, dev)), block, 0, stream,
                       hb.unique_slot, dd.counts, nnz, hb.flags));
    size_t temp_bytes = hb.scan_temp_bytes;
    TT_CUDA_TRY(
        InclusiveSum(hb.scan_temp, temp_bytes, hb.flags, hb.scan, static_cast<int>(nnz), stream));
    TT_CUDA_TRY(Launch(MoveHitGradsKernel, dim3(ElementwiseGrid(nnz * s.dim, dev)), block, 0,
                       stream, hb.unique_slot, hb.scan, dd.counts, s.dim, row_grads, hb.slots,
                       hb.values, cached.num_hit_slots));
  }

  ChainParams& c = plan.params;
  for (int t = 0; t < s.k; ++t) {
    c.cores[t] = lk.cores[t];
    c.core_grads[t] = core_grads[t];
  }
  c.global_scratch = plan.global_scratch_bytes > 0 ? scratch : nullptr;
  c.unique_ids = dd.unique_ids;
  c.group_start = dd.group_start;
  c.counts = dd.counts;
  c.row_grads = row_grads;
  TT_CUDA_TRY(
      Launch(ChainKernel<true>, dim3(plan.blocks), dim3(plan.threads), plan.smem, stream, c));
  return TT_CUDA_OK;
}

bool NeedsWideKeys(int64_t num_rows) {
  // The sentinel key num_rows must fit too.
  return static_cast<uint64_t>(num_rows) > 0xffffffffull;
}

}  // namespace
}  // namespace tt_cuda

using tt_cuda::Fail;
using tt_cuda::NeedsWideKeys;

namespace {

// Calls fn(TIdx{}, TKey{}) for the ids' type and the sort keys' width.
template <typename Fn>
int DispatchTypes(int32_t index_type, int64_t num_rows, const Fn& fn) {
  const bool wide = NeedsWideKeys(num_rows);
  if (index_type == TT_CUDA_INDEX_INT32) {
    return wide ? fn(int32_t{}, uint64_t{}) : fn(int32_t{}, uint32_t{});
  }
  return wide ? fn(int64_t{}, uint64_t{}) : fn(int64_t{}, uint32_t{});
}

// Host-side checks of a cache (its ids' order is checked on the device). The backward reads
// no cache row, so only the forward needs `rows`.
int CheckCache(const TTCudaCache* cache, bool need_ids, bool need_rows) {
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  if (cache->size < 0 || cache->size > std::numeric_limits<int32_t>::max()) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT,
                "cache size must be in [0, 2^31 - 1], got " + std::to_string(cache->size));
  }
  if (cache->size > 0 && need_ids && cache->ids == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache ids are NULL");
  }
  if (cache->size > 0 && need_rows && cache->rows == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache rows are NULL");
  }
  return TT_CUDA_OK;
}

int Forward(const TTCudaLookup* lookup, const tt_cuda::CachedForwardOut& cached, float* output,
            void* workspace, size_t* bytes, TTCudaErrorInfo* error, void* stream) {
  tt_cuda::g_last_error.clear();
  const bool run = workspace != nullptr;
  tt_cuda::Shape s;
  TT_RETURN_IF_ERROR(tt_cuda::CheckLookup(lookup, run, &s));
  if (cached.cache) TT_RETURN_IF_ERROR(CheckCache(cached.cache, run, run));
  if (run && error == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "error is NULL");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return DispatchTypes(lookup->index_type, s.num_rows, [&](auto idx, auto key) {
    return tt_cuda::ForwardImpl<decltype(idx), decltype(key)>(*lookup, s, cached, output, workspace,
                                                              bytes, error, st);
  });
}

int Backward(const TTCudaLookup* lookup, const tt_cuda::CachedBackwardOut& cached,
             const float* grad, float* const* core_grads, void* workspace, size_t* bytes,
             TTCudaErrorInfo* error, void* stream) {
  tt_cuda::g_last_error.clear();
  const bool run = workspace != nullptr;
  tt_cuda::Shape s;
  TT_RETURN_IF_ERROR(tt_cuda::CheckLookup(lookup, run, &s));
  if (cached.cache) TT_RETURN_IF_ERROR(CheckCache(cached.cache, run, false));
  if (run && !cached.copy && error == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "error is NULL");
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return DispatchTypes(lookup->index_type, s.num_rows, [&](auto idx, auto key) {
    return tt_cuda::BackwardImpl<decltype(idx), decltype(key)>(*lookup, s, cached, grad, core_grads,
                                                               workspace, bytes, error, st);
  });
}

template <typename TIdx, typename TKey>
int UniqueImpl(const void* indices, int64_t nnz, int64_t num_rows, int64_t* unique_ids,
               int32_t* inverse, int32_t* num_unique, void* workspace, size_t* bytes,
               TTCudaErrorInfo* error, cudaStream_t stream) {
  using namespace tt_cuda;
  const bool run = workspace != nullptr;
  DeviceInfo dev;
  TT_RETURN_IF_ERROR(GetDeviceInfo(&dev));
  const TIdx* ids = static_cast<const TIdx*>(indices);
  DedupBuffers dd;
  {
    Carver measure(nullptr);
    TT_RETURN_IF_ERROR((Dedup<TIdx, TKey>(measure, false, ids, nnz, num_rows, nullptr, 0, 0,
                                          unique_ids, inverse, error, dev, stream, &dd)));
    if (!run) {
      *bytes = measure.size();
      return TT_CUDA_OK;
    }
    if (*bytes < measure.size()) {
      return Fail(TT_CUDA_ERROR_WORKSPACE_TOO_SMALL, "workspace has " + std::to_string(*bytes) +
                                                         " bytes, needs " +
                                                         std::to_string(measure.size()));
    }
  }
  if (num_unique == nullptr || error == nullptr ||
      (nnz > 0 && (indices == nullptr || unique_ids == nullptr || inverse == nullptr))) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "a required pointer is NULL");
  }
  TT_CUDA_TRY(cudaMemsetAsync(error, 0xff, sizeof(TTCudaErrorInfo), stream));
  TT_CUDA_TRY(cudaMemsetAsync(num_unique, 0, sizeof(int32_t), stream));
  Carver ws(AlignUp(workspace));
  TT_RETURN_IF_ERROR((Dedup<TIdx, TKey>(ws, true, ids, nnz, num_rows, nullptr, 0, 0, unique_ids,
                                        inverse, error, dev, stream, &dd)));
  if (nnz > 0) {
    TT_CUDA_TRY(cudaMemcpyAsync(num_unique, &dd.counts->num_unique, sizeof(int32_t),
                                cudaMemcpyDeviceToDevice, stream));
  }
  return TT_CUDA_OK;
}

int Unique(const void* indices, int32_t index_type, int64_t nnz, int64_t num_rows,
           int64_t* unique_ids, int32_t* inverse, int32_t* num_unique, void* workspace,
           size_t* bytes, TTCudaErrorInfo* error, void* stream) {
  tt_cuda::g_last_error.clear();
  if (index_type != TT_CUDA_INDEX_INT32 && index_type != TT_CUDA_INDEX_INT64) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "index_type must be INT32 or INT64");
  }
  if (nnz < 0 || nnz > tt_cuda::kMaxNnz) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "nnz must be in [0, 2^31 - 2]");
  }
  if (num_rows < 1) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "num_rows must be >= 1");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return DispatchTypes(index_type, num_rows, [&](auto idx, auto key) {
    return UniqueImpl<decltype(idx), decltype(key)>(indices, nnz, num_rows, unique_ids, inverse,
                                                    num_unique, workspace, bytes, error, st);
  });
}

}  // namespace

extern "C" {

int tt_cuda_forward_workspace_size(const TTCudaLookup* lookup, size_t* bytes) {
  if (bytes == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "bytes is NULL");
  return Forward(lookup, {}, nullptr, nullptr, bytes, nullptr, nullptr);
}

int tt_cuda_forward(const TTCudaLookup* lookup, float* output, void* workspace,
                    size_t workspace_bytes, TTCudaErrorInfo* error, void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  return Forward(lookup, {}, output, workspace, &workspace_bytes, error, stream);
}

int tt_cuda_backward_workspace_size(const TTCudaLookup* lookup, size_t* bytes) {
  if (bytes == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "bytes is NULL");
  return Backward(lookup, {}, nullptr, nullptr, nullptr, bytes, nullptr, nullptr);
}

int tt_cuda_backward(const TTCudaLookup* lookup, const float* grad, float* const* core_grads,
                     void* workspace, size_t workspace_bytes, TTCudaErrorInfo* error,
                     void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  return Backward(lookup, {}, grad, core_grads, workspace, &workspace_bytes, error, stream);
}

int tt_cuda_cached_forward_workspace_size(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                          size_t* bytes) {
  if (bytes == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "bytes is NULL");
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  tt_cuda::CachedForwardOut cached;
  cached.cache = cache;
  return Forward(lookup, cached, nullptr, nullptr, bytes, nullptr, nullptr);
}

int tt_cuda_cached_forward(const TTCudaLookup* lookup, const TTCudaCache* cache, float* output,
                           int32_t* slots, int64_t* num_hits, void* workspace,
                           size_t workspace_bytes, TTCudaErrorInfo* error, void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  tt_cuda::CachedForwardOut cached;
  cached.cache = cache;
  cached.slots = slots;
  cached.num_hits = num_hits;
  return Forward(lookup, cached, output, workspace, &workspace_bytes, error, stream);
}

int tt_cuda_cached_backward_workspace_size(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                           size_t* bytes) {
  if (bytes == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "bytes is NULL");
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  tt_cuda::CachedBackwardOut cached;
  cached.cache = cache;
  return Backward(lookup, cached, nullptr, nullptr, nullptr, bytes, nullptr, nullptr);
}

int tt_cuda_cached_backward(const TTCudaLookup* lookup, const TTCudaCache* cache, const float* grad,
                            float* const* core_grads, int64_t* num_hit_slots, void* workspace,
                            size_t workspace_bytes, TTCudaErrorInfo* error, void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  tt_cuda::CachedBackwardOut cached;
  cached.cache = cache;
  cached.num_hit_slots = num_hit_slots;
  return Backward(lookup, cached, grad, core_grads, workspace, &workspace_bytes, error, stream);
}

int tt_cuda_cached_backward_cache_grads(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                        int64_t num_hit_slots, int64_t* hit_slots,
                                        float* hit_values, const void* workspace,
                                        size_t workspace_bytes, void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  if (cache == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "cache is NULL");
  tt_cuda::CachedBackwardOut cached;
  cached.cache = cache;
  cached.copy = true;
  cached.copy_count = num_hit_slots;
  cached.hit_slots = hit_slots;
  cached.hit_values = hit_values;
  return Backward(lookup, cached, nullptr, nullptr, const_cast<void*>(workspace), &workspace_bytes,
                  nullptr, stream);
}

int tt_cuda_read_count(const int64_t* device_count, int64_t* host_count, void* stream) {
  tt_cuda::g_last_error.clear();
  if (device_count == nullptr || host_count == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "count pointer is NULL");
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t err =
      cudaMemcpyAsync(host_count, device_count, sizeof(int64_t), cudaMemcpyDeviceToHost, st);
  if (err == cudaSuccess) err = cudaStreamSynchronize(st);
  if (err != cudaSuccess) return tt_cuda::CudaFail(err, "reading the count");
  return TT_CUDA_OK;
}

int tt_cuda_unique_workspace_size(int64_t nnz, int64_t num_rows, int32_t index_type,
                                  size_t* bytes) {
  if (bytes == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "bytes is NULL");
  return Unique(nullptr, index_type, nnz, num_rows, nullptr, nullptr, nullptr, nullptr, bytes,
                nullptr, nullptr);
}

int tt_cuda_unique(const void* indices, int32_t index_type, int64_t nnz, int64_t num_rows,
                   int64_t* unique_ids, int32_t* inverse, int32_t* num_unique, void* workspace,
                   size_t workspace_bytes, TTCudaErrorInfo* error, void* stream) {
  if (workspace == nullptr) return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "workspace is NULL");
  return Unique(indices, index_type, nnz, num_rows, unique_ids, inverse, num_unique, workspace,
                &workspace_bytes, error, stream);
}

int tt_cuda_read_error(const TTCudaErrorInfo* device_error, TTCudaErrorInfo* host_error,
                       void* stream) {
  tt_cuda::g_last_error.clear();
  if (device_error == nullptr || host_error == nullptr) {
    return Fail(TT_CUDA_ERROR_INVALID_ARGUMENT, "error pointer is NULL");
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemcpyAsync(host_error, device_error, sizeof(TTCudaErrorInfo),
                                    cudaMemcpyDeviceToHost, st);
  if (err == cudaSuccess) err = cudaStreamSynchronize(st);
  if (err != cudaSuccess) return tt_cuda::CudaFail(err, "reading the error info");
  return TT_CUDA_OK;
}

void tt_cuda_set_shared_memory_budget(size_t bytes) { tt_cuda::g_smem_budget = bytes; }

const char* tt_cuda_status_string(int status) {
  switch (status) {
    case TT_CUDA_OK:
      return "ok";
    case TT_CUDA_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case TT_CUDA_ERROR_WORKSPACE_TOO_SMALL:
      return "workspace too small";
    case TT_CUDA_ERROR_CUDA:
      return "CUDA runtime error";
    default:
      return "unknown status";
  }
}

const char* tt_cuda_last_error_message(void) { return tt_cuda::g_last_error.c_str(); }

}  // extern "C"
