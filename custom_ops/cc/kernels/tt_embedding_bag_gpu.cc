// GPU OpKernels of TTKeras>TTEmbeddingBag and TTKeras>TTEmbeddingBagGrad (docs/ops.md).
//
// Compiled by g++ with -DGOOGLE_CUDA=1 (TF's headers do not compile under nvcc 13): this
// file only validates shapes on the host, allocates the output and one temporary tensor
// through TF's allocator, takes the raw CUDA stream from the op context and calls the
// framework-free launchers of custom_ops/cuda/tt_kernels.h, linked in from tt_kernels.o.
//
// Ids and row_splits live in device memory, so their contents are checked by the kernels;
// the op then copies a 40-byte error record back and waits for the stream once per call to
// turn a bad id or bad splits into the same InvalidArgument as the CPU kernel.
#if GOOGLE_CUDA

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tt_core.h"
#include "tt_kernels.h"
#include "tt_op_util.h"
#include "tt_validation.h"
#include "xla/stream_executor/stream.h"

namespace tensorflow {
namespace {

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

int32_t ToCudaCombiner(Combiner c) {
  switch (c) {
    case Combiner::kNone: return TT_CUDA_COMBINER_NONE;
    case Combiner::kSum: return TT_CUDA_COMBINER_SUM;
    case Combiner::kMean: return TT_CUDA_COMBINER_MEAN;
    case Combiner::kSqrtn: return TT_CUDA_COMBINER_SQRTN;
  }
  return -1;
}

absl::Status FromLauncher(int status, const char* what) {
  if (status == TT_CUDA_OK) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", tt_cuda_status_string(status), ": ",
                                           tt_cuda_last_error_message());
  if (status == TT_CUDA_ERROR_INVALID_ARGUMENT) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

absl::Status GetCudaStream(OpKernelContext* ctx, void** stream) {
  const DeviceContext* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) {
    return absl::InternalError("TTEmbeddingBag GPU kernel: the op has no GPU stream");
  }
  *stream = dc->stream()->platform_specific_handle().stream;
  if (*stream == nullptr) {
    return absl::InternalError("TTEmbeddingBag GPU kernel: the stream has no CUDA handle");
  }
  return absl::OkStatus();
}

// The lookup description the launchers take; device pointers come from the input tensors.
template <typename Tid>
absl::Status MakeLookup(OpKernelContext* ctx, const OpInputList& cores, const TTDims& dims,
                        int64_t num_rows, Combiner combiner,
                        const tt_keras::BagInputs<Tid>& bags, TTCudaLookup* lk) {
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
  const Tensor *indices_ptr, *splits_ptr, *weights_ptr;
  TF_RETURN_IF_ERROR(ctx->input("indices", &indices_ptr));
  TF_RETURN_IF_ERROR(ctx->input("row_splits", &splits_ptr));
  TF_RETURN_IF_ERROR(ctx->input("weights", &weights_ptr));
  const Tensor& indices = *indices_ptr;
  const Tensor& splits = *splits_ptr;
  const Tensor& weights = *weights_ptr;
  if (bags.nnz > (int64_t{1} << 31) - 2) {
    return InvalidArgument("the GPU kernel takes at most 2^31 - 2 indices, got ",
                                   bags.nnz);
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

absl::Status AllocateWorkspace(OpKernelContext* ctx, size_t workspace_bytes, Tensor* temp,
                               TTCudaErrorInfo** error, void** workspace) {
  const int64_t total = kErrorSlot + static_cast<int64_t>(workspace_bytes);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_INT8, TensorShape({total}), temp));
  int8_t* base = temp->flat<int8_t>().data();
  *error = reinterpret_cast<TTCudaErrorInfo*>(base);
  *workspace = base + kErrorSlot;
  return absl::OkStatus();
}

// Waits for the stream, then reports what the kernels found, with the CPU kernel's words.
absl::Status CheckDeviceErrors(const TTCudaErrorInfo* device_error, void* stream,
                               int64_t num_rows, int64_t nnz) {
  TTCudaErrorInfo e;
  TF_RETURN_IF_ERROR(FromLauncher(tt_cuda_read_error(device_error, &e, stream),
                                  "TTEmbeddingBag GPU kernel"));
  if (e.index_position >= 0) {
    return InvalidArgument("indices[", e.index_position, "] = ", e.index_value,
                                   " is out of range [0, ", num_rows, ")");
  }
  if (e.split_position >= 0) {
    const int64_t b = e.split_position;
    if (b == 0) return InvalidArgument("row_splits[0] = ", e.split_value, " must be 0");
    if (e.split_value < e.split_previous) {
      return InvalidArgument("row_splits must not decrease: row_splits[", b, "] = ",
                                     e.split_value, " < row_splits[", b - 1,
                                     "] = ", e.split_previous);
    }
    return InvalidArgument("row_splits[-1] = ", e.split_value,
                                   " must equal the number of indices, ", nnz);
  }
  return absl::OkStatus();
}

template <typename Tid>
class TTEmbeddingBagGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagShapes<Tid>(ctx, combiner_, &bags));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, MakeLookup<Tid>(ctx, cores, dims, num_rows_, combiner_, bags, &lk));

    const int64_t out_rows = combiner_ == Combiner::kNone ? bags.nnz : bags.num_bags;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({out_rows, dims.dim}), &output));
    // The GPU backward rebuilds its own dedup, so it hands no residuals to the gradient.
    Tensor* unused = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({0}), &unused));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({0}), &unused));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GetCudaStream(ctx, &stream));

    size_t bytes = 0;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_forward_workspace_size(&lk, &bytes),
                                     "TTEmbeddingBag GPU workspace"));
    Tensor temp;
    TTCudaErrorInfo* error = nullptr;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, bytes, &temp, &error, &workspace));
    float* out = output->NumElements() > 0 ? output->flat<float>().data() : nullptr;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_forward(&lk, out, workspace, bytes, error, stream),
                                     "TTEmbeddingBag GPU kernel"));
    OP_REQUIRES_OK(ctx, CheckDeviceErrors(error, stream, num_rows_, bags.nnz));
  }
};

template <typename Tid>
class TTEmbeddingBagGradGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagShapes<Tid>(ctx, combiner_, &bags));
    const Tensor& grad = ctx->input(0);
    OP_REQUIRES_OK(ctx, tt_keras::ValidateGradShape<Tid>(grad, combiner_, bags, dims.dim));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, MakeLookup<Tid>(ctx, cores, dims, num_rows_, combiner_, bags, &lk));

    OpOutputList core_grads;
    OP_REQUIRES_OK(ctx, ctx->output_list("core_grads", &core_grads));
    float* grad_ptrs[TT_CUDA_MAX_CORES] = {nullptr};
    for (int t = 0; t < dims.k; ++t) {
      Tensor* g = nullptr;
      OP_REQUIRES_OK(ctx, core_grads.allocate(t, cores[t].shape(), &g));
      grad_ptrs[t] = g->flat<float>().data();
    }
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GetCudaStream(ctx, &stream));

    size_t bytes = 0;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_backward_workspace_size(&lk, &bytes),
                                     "TTEmbeddingBagGrad GPU workspace"));
    Tensor temp;
    TTCudaErrorInfo* error = nullptr;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, bytes, &temp, &error, &workspace));
    const float* grad_data = grad.NumElements() > 0 ? grad.flat<float>().data() : nullptr;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_backward(&lk, grad_data, grad_ptrs, workspace,
                                                      bytes, error, stream),
                                     "TTEmbeddingBagGrad GPU kernel"));
    OP_REQUIRES_OK(ctx, CheckDeviceErrors(error, stream, num_rows_, bags.nnz));
  }
};

#define REGISTER_GPU(Tid)                                                          \
  REGISTER_KERNEL_BUILDER(Name("TTKeras>TTEmbeddingBag")                           \
                              .Device(DEVICE_GPU)                                  \
                              .TypeConstraint<Tid>("Tindices"),                    \
                          TTEmbeddingBagGpuOp<Tid>);                               \
  REGISTER_KERNEL_BUILDER(Name("TTKeras>TTEmbeddingBagGrad")                       \
                              .Device(DEVICE_GPU)                                  \
                              .TypeConstraint<Tid>("Tindices"),                    \
                          TTEmbeddingBagGradGpuOp<Tid>);

REGISTER_GPU(int32_t);
REGISTER_GPU(int64_t);
#undef REGISTER_GPU

}  // namespace
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
