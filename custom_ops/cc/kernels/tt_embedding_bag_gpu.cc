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

template <typename Tid>
class TTEmbeddingBagGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/false, &in));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, tt_gpu::MakeLookup<Tid>(ctx, in, num_rows_, combiner_, &lk));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, in, &output));
    // The GPU backward rebuilds its own dedup, so it hands no residuals to the gradient.
    Tensor* unused = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({0}), &unused));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({0}), &unused));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, tt_gpu::GetCudaStream(ctx, &stream));

    tt_gpu::GpuScratch scratch;
    OP_REQUIRES_OK(
        ctx, tt_gpu::AllocateScratch(
                 ctx, [&](size_t* bytes) { return tt_cuda_forward_workspace_size(&lk, bytes); },
                 "TTEmbeddingBag GPU workspace", &scratch));
    float* out = output->NumElements() > 0 ? output->flat<float>().data() : nullptr;
    OP_REQUIRES_OK(ctx, tt_gpu::FromLauncher(tt_cuda_forward(&lk, out, scratch.workspace,
                                                             scratch.bytes, scratch.error, stream),
                                             "TTEmbeddingBag GPU kernel"));
    OP_REQUIRES_OK(ctx, tt_gpu::CheckDeviceErrors(scratch.error, stream, num_rows_, in.bags.nnz));
  }
};

template <typename Tid>
class TTEmbeddingBagGradGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/false, &in));
    const Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ReadGrad(ctx, in, &grad));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, tt_gpu::MakeLookup<Tid>(ctx, in, num_rows_, combiner_, &lk));

    float* grad_ptrs[TT_CUDA_MAX_CORES] = {nullptr};
    OP_REQUIRES_OK(ctx, tt_gpu::AllocateCoreGrads(ctx, in.cores, grad_ptrs));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, tt_gpu::GetCudaStream(ctx, &stream));

    tt_gpu::GpuScratch scratch;
    OP_REQUIRES_OK(
        ctx, tt_gpu::AllocateScratch(
                 ctx, [&](size_t* bytes) { return tt_cuda_backward_workspace_size(&lk, bytes); },
                 "TTEmbeddingBagGrad GPU workspace", &scratch));
    const float* grad_data = grad->NumElements() > 0 ? grad->flat<float>().data() : nullptr;
    OP_REQUIRES_OK(
        ctx, tt_gpu::FromLauncher(tt_cuda_backward(&lk, grad_data, grad_ptrs, scratch.workspace,
                                                   scratch.bytes, scratch.error, stream),
                                  "TTEmbeddingBagGrad GPU kernel"));
    OP_REQUIRES_OK(ctx, tt_gpu::CheckDeviceErrors(scratch.error, stream, num_rows_, in.bags.nnz));
  }
};

TT_REGISTER_BAG_KERNELS(DEVICE_GPU, "TTKeras>TTEmbeddingBag", TTEmbeddingBagGpuOp,
                        TTEmbeddingBagGradGpuOp);

}  // namespace
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
