// GPU OpKernels of TTKeras>TTEmbeddingBag and TTKeras>TTEmbeddingBagGrad (docs/ops.md).
//
// Compiled by g++ with -DGOOGLE_CUDA=1 (TF's headers do not compile under nvcc 13): this
// file only validates shapes on the host, allocates the output and one temporary tensor
// through TF's allocator, takes the raw CUDA stream from the op context and calls the
// framework-free launchers of custom_ops/cuda/tt_kernels.h, linked in from tt_kernels.o.
//
// Ids and row_splits live in device memory, so their contents are checked by the kernels;
// the op then copies a small error record back and waits for the stream once per call to
// turn a bad id or bad splits into the same InvalidArgument as the CPU kernel
// (tt_gpu_util.h).
#if GOOGLE_CUDA

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tt_core.h"
#include "tt_gpu_util.h"
#include "tt_kernels.h"
#include "tt_op_util.h"
#include "tt_validation.h"

namespace tensorflow {
namespace {

using tt_gpu::AllocateCoreGrads;
using tt_gpu::AllocateWorkspace;
using tt_gpu::CheckDeviceErrors;
using tt_gpu::FromLauncher;
using tt_gpu::GetCudaStream;
using tt_gpu::MakeLookup;
using tt_keras::Combiner;
using tt_keras::TTDims;

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

    float* grad_ptrs[TT_CUDA_MAX_CORES] = {nullptr};
    OP_REQUIRES_OK(ctx, AllocateCoreGrads(ctx, cores, grad_ptrs));
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
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_backward(&lk, grad_data, grad_ptrs, workspace, bytes,
                                                      error, stream),
                                     "TTEmbeddingBagGrad GPU kernel"));
    OP_REQUIRES_OK(ctx, CheckDeviceErrors(error, stream, num_rows_, bags.nnz));
  }
};

#define REGISTER_GPU(Tid)                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TTKeras>TTEmbeddingBag").Device(DEVICE_GPU).TypeConstraint<Tid>("Tindices"),     \
      TTEmbeddingBagGpuOp<Tid>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TTKeras>TTEmbeddingBagGrad").Device(DEVICE_GPU).TypeConstraint<Tid>("Tindices"), \
      TTEmbeddingBagGradGpuOp<Tid>);

REGISTER_GPU(int32_t);
REGISTER_GPU(int64_t);
#undef REGISTER_GPU

}  // namespace
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
