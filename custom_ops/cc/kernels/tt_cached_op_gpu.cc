// GPU OpKernels of TTKeras>TTEmbeddingBagCached and its gradient (docs/cache.md).
//
// As tt_embedding_bag_gpu.cc: g++ with -DGOOGLE_CUDA=1, host-side shape checks, TF's
// allocator for outputs and one temporary buffer, and the framework-free launchers of
// custom_ops/cuda/tt_kernels.h. Ids, splits and the cache's ids live in device memory and
// are checked there; the op reads the error record back once per call (the one wait on the
// stream) and reports what it holds in the CPU kernel's words.
//
// What differs from the CPU kernels: the forward hands the gradient only each position's
// cache slot (residual_slots; its plan and partials come out empty), and the gradient op
// rebuilds what it needs from the ids and the cache instead of reading the residuals, so
// they are not checked here. Its outputs' size (the distinct slots hit) is known only on
// the device: the gradient waits for the stream a second time, to read it, before it can
// allocate them.
#if GOOGLE_CUDA

#include <cstdint>

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

// The cache's shapes (its ids are checked by the kernels) and its launcher description.
absl::Status MakeCache(OpKernelContext* ctx, bool with_rows, int64_t dim, TTCudaCache* cache) {
  const Tensor* cache_ids;
  TF_RETURN_IF_ERROR(ctx->input("cache_ids", &cache_ids));
  const Tensor* cache_rows = nullptr;
  if (with_rows) TF_RETURN_IF_ERROR(ctx->input("cache_rows", &cache_rows));
  TF_RETURN_IF_ERROR(tt_keras::ValidateCacheShapes(*cache_ids, cache_rows, dim));
  *cache = TTCudaCache();
  cache->size = cache_ids->dim_size(0);
  if (cache->size > 0) {
    cache->ids = cache_ids->flat<int64_t>().data();
    if (cache_rows) cache->rows = cache_rows->flat<float>().data();  // the backward needs none
  }
  return absl::OkStatus();
}

template <typename Tid>
class TTEmbeddingBagCachedGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    TTCudaCache cache;
    OP_REQUIRES_OK(ctx, MakeCache(ctx, /*with_rows=*/true, dims.dim, &cache));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagShapes<Tid>(ctx, combiner_, &bags));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, MakeLookup<Tid>(ctx, cores, dims, num_rows_, combiner_, bags, &lk));

    const int64_t out_rows = combiner_ == Combiner::kNone ? bags.nnz : bags.num_bags;
    Tensor* output = nullptr;
    Tensor* num_hits = nullptr;
    Tensor* slots = nullptr;
    Tensor* unused = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({out_rows, dims.dim}), &output));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &num_hits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({bags.nnz}), &slots));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({0}), &unused));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({0}), &unused));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GetCudaStream(ctx, &stream));

    size_t bytes = 0;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_cached_forward_workspace_size(&lk, &cache, &bytes),
                                     "TTEmbeddingBagCached GPU workspace"));
    Tensor temp;
    TTCudaErrorInfo* error = nullptr;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, bytes, &temp, &error, &workspace));
    float* out = output->NumElements() > 0 ? output->flat<float>().data() : nullptr;
    int32_t* slot_data = bags.nnz > 0 ? slots->flat<int32_t>().data() : nullptr;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_cached_forward(&lk, &cache, out, slot_data,
                                                            num_hits->flat<int64_t>().data(),
                                                            workspace, bytes, error, stream),
                                     "TTEmbeddingBagCached GPU kernel"));
    OP_REQUIRES_OK(ctx, CheckDeviceErrors(error, stream, num_rows_, bags.nnz,
                                          "TTEmbeddingBagCached GPU kernel"));
  }
};

template <typename Tid>
class TTEmbeddingBagCachedGradGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    TTCudaCache cache;
    OP_REQUIRES_OK(ctx, MakeCache(ctx, /*with_rows=*/false, dims.dim, &cache));
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
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_cached_backward_workspace_size(&lk, &cache, &bytes),
                                     "TTEmbeddingBagCachedGrad GPU workspace"));
    Tensor temp, count;
    TTCudaErrorInfo* error = nullptr;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, bytes, &temp, &error, &workspace));
    // Where the launcher leaves the number of distinct slots hit.
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_INT64, TensorShape({1}), &count));
    int64_t* device_count = count.flat<int64_t>().data();
    const float* grad_data = grad.NumElements() > 0 ? grad.flat<float>().data() : nullptr;
    OP_REQUIRES_OK(
        ctx, FromLauncher(tt_cuda_cached_backward(&lk, &cache, grad_data, grad_ptrs, device_count,
                                                  workspace, bytes, error, stream),
                          "TTEmbeddingBagCachedGrad GPU kernel"));
    OP_REQUIRES_OK(ctx, CheckDeviceErrors(error, stream, num_rows_, bags.nnz,
                                          "TTEmbeddingBagCachedGrad GPU kernel"));
    int64_t num_hit_slots = 0;
    OP_REQUIRES_OK(ctx, FromLauncher(tt_cuda_read_count(device_count, &num_hit_slots, stream),
                                     "TTEmbeddingBagCachedGrad GPU kernel"));
    Tensor* hit_slots = nullptr;
    Tensor* hit_values = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output("cache_grad_slots", TensorShape({num_hit_slots}), &hit_slots));
    OP_REQUIRES_OK(ctx, ctx->allocate_output("cache_grad_values",
                                             TensorShape({num_hit_slots, dims.dim}), &hit_values));
    if (num_hit_slots == 0) return;
    OP_REQUIRES_OK(ctx,
                   FromLauncher(tt_cuda_cached_backward_cache_grads(
                                    &lk, &cache, num_hit_slots, hit_slots->flat<int64_t>().data(),
                                    hit_values->flat<float>().data(), workspace, bytes, stream),
                                "TTEmbeddingBagCachedGrad GPU kernel"));
  }
};

#define REGISTER_GPU(Tid)                                                                          \
  REGISTER_KERNEL_BUILDER(                                                                         \
      Name("TTKeras>TTEmbeddingBagCached").Device(DEVICE_GPU).TypeConstraint<Tid>("Tindices"),     \
      TTEmbeddingBagCachedGpuOp<Tid>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                                         \
      Name("TTKeras>TTEmbeddingBagCachedGrad").Device(DEVICE_GPU).TypeConstraint<Tid>("Tindices"), \
      TTEmbeddingBagCachedGradGpuOp<Tid>);

REGISTER_GPU(int32_t);
REGISTER_GPU(int64_t);
#undef REGISTER_GPU

}  // namespace
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
