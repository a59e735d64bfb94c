// Host-side helpers of the TT ops' GPU OpKernels (tt_embedding_bag_gpu.cc,
// tt_cached_op_gpu.cc): the launcher description of a lookup, the temporary buffer that holds
// the device error record and the launcher's workspace, the stream, and the translation of
// launcher statuses and device-found data errors into the CPU kernels' InvalidArgument words.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_GPU_UTIL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_GPU_UTIL_H_

#if GOOGLE_CUDA

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tt_core.h"
#include "tt_kernels.h"
#include "tt_op_util.h"
#include "tt_validation.h"
#include "xla/stream_executor/stream.h"

namespace tensorflow {
namespace tt_gpu {

using tt_keras::Combiner;
using tt_keras::TTDims;

// The error record sits at the start of the temporary buffer, the launcher's workspace
// after it (the launcher aligns its own buffers).
constexpr int64_t kErrorSlot = 256;
static_assert(sizeof(TTCudaErrorInfo) <= kErrorSlot, "error record slot");

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

inline int32_t ToCudaCombiner(Combiner c) {
  switch (c) {
    case Combiner::kNone:
      return TT_CUDA_COMBINER_NONE;
    case Combiner::kSum:
      return TT_CUDA_COMBINER_SUM;
    case Combiner::kMean:
      return TT_CUDA_COMBINER_MEAN;
    case Combiner::kSqrtn:
      return TT_CUDA_COMBINER_SQRTN;
  }
  return -1;
}

inline absl::Status FromLauncher(int status, const char* what) {
  if (status == TT_CUDA_OK) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": ", tt_cuda_status_string(status), ": ", tt_cuda_last_error_message());
  if (status == TT_CUDA_ERROR_INVALID_ARGUMENT) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

inline absl::Status GetCudaStream(OpKernelContext* ctx, void** stream) {
  const DeviceContext* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) {
    return absl::InternalError("TTKeras GPU kernel: the op has no GPU stream");
  }
  *stream = dc->stream()->platform_specific_handle().stream;
  if (*stream == nullptr) {
    return absl::InternalError("TTKeras GPU kernel: the stream has no CUDA handle");
  }
  return absl::OkStatus();
}

// The lookup description the launchers take; device pointers come from the input tensors.
template <typename Tid>
absl::Status MakeLookup(OpKernelContext* ctx, const tt_keras::BagOpInputs<Tid>& in,
                        int64_t num_rows, Combiner combiner, TTCudaLookup* lk) {
  const std::vector<Tensor>& cores = in.cores;
  const TTDims& dims = in.dims;
  const tt_keras::BagInputs<Tid>& bags = in.bags;
  *lk = TTCudaLookup();
  lk->shape.num_cores = dims.k;
  for (int t = 0; t < dims.k; ++t) {
    if (dims.q[t] > std::numeric_limits<int32_t>::max() ||
        dims.r[t + 1] > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument("cores[", t, "]: q and ranks must fit in 32 bits");
    }
    lk->shape.q[t] = static_cast<int32_t>(dims.q[t]);
    lk->shape.p[t] = dims.p[t];
    lk->cores[t] = cores[t].flat<float>().data();
  }
  for (int t = 0; t <= dims.k; ++t) lk->shape.ranks[t] = static_cast<int32_t>(dims.r[t]);
  lk->shape.num_rows = num_rows;
  tt_keras::BagTensors tensors;
  TF_RETURN_IF_ERROR(tt_keras::ReadBagTensors(ctx, &tensors));
  const Tensor& indices = *tensors.indices;
  const Tensor& splits = *tensors.splits;
  const Tensor& weights = *tensors.weights;
  if (bags.nnz > (int64_t{1} << 31) - 2) {
    return InvalidArgument("the GPU kernel takes at most 2^31 - 2 indices, got ", bags.nnz);
  }
  lk->indices = indices.flat<Tid>().data();
  lk->index_type = std::is_same<Tid, int32_t>::value ? TT_CUDA_INDEX_INT32 : TT_CUDA_INDEX_INT64;
  lk->combiner = ToCudaCombiner(combiner);
  lk->nnz = bags.nnz;
  if (combiner != Combiner::kNone) {
    lk->row_splits = splits.flat<int64_t>().data();
    lk->num_bags = bags.num_bags;
  }
  lk->weights = weights.NumElements() > 0 ? weights.flat<float>().data() : nullptr;
  return absl::OkStatus();
}

inline absl::Status AllocateWorkspace(OpKernelContext* ctx, size_t workspace_bytes, Tensor* temp,
                                      TTCudaErrorInfo** error, void** workspace) {
  const int64_t total = kErrorSlot + static_cast<int64_t>(workspace_bytes);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_INT8, TensorShape({total}), temp));
  int8_t* base = temp->flat<int8_t>().data();
  *error = reinterpret_cast<TTCudaErrorInfo*>(base);
  *workspace = base + kErrorSlot;
  return absl::OkStatus();
}

// One temporary tensor (`holder`) with the device error record and the launcher's workspace
// of `bytes`.
struct GpuScratch {
  Tensor holder;
  TTCudaErrorInfo* error = nullptr;
  void* workspace = nullptr;
  size_t bytes = 0;
};

// `query(size_t* bytes)` is the launcher's workspace-size function for this call; `what`
// names the op in its errors.
template <typename Query>
absl::Status AllocateScratch(OpKernelContext* ctx, Query query, const char* what,
                             GpuScratch* scratch) {
  TF_RETURN_IF_ERROR(FromLauncher(query(&scratch->bytes), what));
  return AllocateWorkspace(ctx, scratch->bytes, &scratch->holder, &scratch->error,
                           &scratch->workspace);
}

// Allocates the gradient op's output list "core_grads", one tensor shaped like each core;
// ptrs[t] gets core t's device pointer (the launchers zero and fill them).
inline absl::Status AllocateCoreGrads(OpKernelContext* ctx, const std::vector<Tensor>& cores,
                                      float* ptrs[TT_CUDA_MAX_CORES]) {
  OpOutputList core_grads;
  TF_RETURN_IF_ERROR(ctx->output_list("core_grads", &core_grads));
  for (int t = 0; t < static_cast<int>(cores.size()); ++t) {
    Tensor* g = nullptr;
    TF_RETURN_IF_ERROR(core_grads.allocate(t, cores[t].shape(), &g));
    ptrs[t] = g->flat<float>().data();
  }
  return absl::OkStatus();
}

// Waits for the stream, then reports what the kernels found, with the CPU kernel's words.
inline absl::Status CheckDeviceErrors(const TTCudaErrorInfo* device_error, void* stream,
                                      int64_t num_rows, int64_t nnz,
                                      const char* what = "TTEmbeddingBag GPU kernel") {
  TTCudaErrorInfo e;
  TF_RETURN_IF_ERROR(FromLauncher(tt_cuda_read_error(device_error, &e, stream), what));
  if (e.index_position >= 0) {
    return InvalidArgument("indices[", e.index_position, "] = ", e.index_value,
                           " is out of range [0, ", num_rows, ")");
  }
  if (e.split_position >= 0) {
    const int64_t b = e.split_position;
    if (b == 0) return InvalidArgument("row_splits[0] = ", e.split_value, " must be 0");
    if (e.split_value < e.split_previous) {
      return InvalidArgument("row_splits must not decrease: row_splits[", b, "] = ", e.split_value,
                             " < row_splits[", b - 1, "] = ", e.split_previous);
    }
    return InvalidArgument("row_splits[-1] = ", e.split_value,
                           " must equal the number of indices, ", nnz);
  }
  if (e.cache_position >= 0) {
    // The CPU kernel's words (tt_keras::ValidateCacheIds).
    const int64_t s = e.cache_position;
    if (e.cache_value < 0) {
      return InvalidArgument("cache_ids[", s, "] = ", e.cache_value,
                             " is negative (empty slots hold ids >= num_rows, e.g. INT64_MAX)");
    }
    if (e.cache_value < e.cache_previous) {
      return InvalidArgument("cache_ids must be sorted: cache_ids[", s, "] = ", e.cache_value,
                             " < cache_ids[", s - 1, "] = ", e.cache_previous);
    }
    return InvalidArgument("cache_ids[", s - 1, "] and cache_ids[", s, "] both hold row ",
                           e.cache_value);
  }
  return absl::OkStatus();
}

}  // namespace tt_gpu
}  // namespace tensorflow

#endif  // GOOGLE_CUDA

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_GPU_UTIL_H_
