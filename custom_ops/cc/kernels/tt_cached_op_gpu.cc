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

// The cache's shapes (its ids are checked by the kernels) and its launcher description;
// cache_rows: the rows' values (the forward's), or nullptr (the backward needs none).
absl::Status MakeCache(OpKernelContext* ctx, const Tensor* cache_rows, int64_t dim,
                       TTCudaCache* cache) {
  const Tensor* cache_ids = nullptr;
  TF_RETURN_IF_ERROR(tt_keras::ReadCacheInputs(ctx, dim, &cache_ids, cache_rows));
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
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/false, &in, {"cache_rows"}));
    TTCudaCache cache;
    OP_REQUIRES_OK(ctx, MakeCache(ctx, &in.values.values().back(), in.dims.dim, &cache));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, tt_gpu::MakeLookup<Tid>(ctx, in, num_rows_, combiner_, &lk));
    Tensor* output = nullptr;
    Tensor* num_hits = nullptr;
    Tensor* slots = nullptr;
    Tensor* unused = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, in, &output));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &num_hits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({in.bags.nnz}), &slots));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({0}), &unused));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({0}), &unused));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, tt_gpu::GetCudaStream(ctx, &stream));

    tt_gpu::GpuScratch scratch;
    OP_REQUIRES_OK(ctx, tt_gpu::AllocateScratch(
                            ctx,
                            [&](size_t* bytes) {
                              return tt_cuda_cached_forward_workspace_size(&lk, &cache, bytes);
                            },
                            "TTEmbeddingBagCached GPU workspace", &scratch));
    float* out = output->NumElements() > 0 ? output->flat<float>().data() : nullptr;
    int32_t* slot_data = in.bags.nnz > 0 ? slots->flat<int32_t>().data() : nullptr;
    OP_REQUIRES_OK(
        ctx, tt_gpu::FromLauncher(tt_cuda_cached_forward(
                                      &lk, &cache, out, slot_data, num_hits->flat<int64_t>().data(),
                                      scratch.workspace, scratch.bytes, scratch.error, stream),
                                  "TTEmbeddingBagCached GPU kernel"));
    OP_REQUIRES_OK(ctx, tt_gpu::CheckDeviceErrors(scratch.error, stream, num_rows_, in.bags.nnz,
                                                  "TTEmbeddingBagCached GPU kernel"));
  }
};

template <typename Tid>
class TTEmbeddingBagCachedGradGpuOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/false, &in));
    TTCudaCache cache;
    OP_REQUIRES_OK(ctx, MakeCache(ctx, /*cache_rows=*/nullptr, in.dims.dim, &cache));
    const Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ReadGrad(ctx, in, &grad));
    TTCudaLookup lk;
    OP_REQUIRES_OK(ctx, tt_gpu::MakeLookup<Tid>(ctx, in, num_rows_, combiner_, &lk));

    float* grad_ptrs[TT_CUDA_MAX_CORES] = {nullptr};
    OP_REQUIRES_OK(ctx, tt_gpu::AllocateCoreGrads(ctx, in.cores, grad_ptrs));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, tt_gpu::GetCudaStream(ctx, &stream));

    tt_gpu::GpuScratch scratch;
    OP_REQUIRES_OK(ctx, tt_gpu::AllocateScratch(
                            ctx,
                            [&](size_t* bytes) {
                              return tt_cuda_cached_backward_workspace_size(&lk, &cache, bytes);
                            },
                            "TTEmbeddingBagCachedGrad GPU workspace", &scratch));
    Tensor count;
    // Where the launcher leaves the number of distinct slots hit.
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_INT64, TensorShape({1}), &count));
    int64_t* device_count = count.flat<int64_t>().data();
    const float* grad_data = grad->NumElements() > 0 ? grad->flat<float>().data() : nullptr;
    OP_REQUIRES_OK(
        ctx, tt_gpu::FromLauncher(
                 tt_cuda_cached_backward(&lk, &cache, grad_data, grad_ptrs, device_count,
                                         scratch.workspace, scratch.bytes, scratch.error, stream),
                 "TTEmbeddingBagCachedGrad GPU kernel"));
    OP_REQUIRES_OK(ctx, tt_gpu::CheckDeviceErrors(scratch.error, stream, num_rows_, in.bags.nnz,
                                                  "TTEmbeddingBagCachedGrad GPU kernel"));
    int64_t num_hit_slots = 0;
    OP_REQUIRES_OK(ctx,
                   tt_gpu::FromLauncher(tt_cuda_read_count(device_count, &num_hit_slots, stream),
                                        "TTEmbeddingBagCachedGrad GPU kernel"));
    Tensor* hit_slots = nullptr;
    Tensor* hit_values = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output("cache_grad_slots", TensorShape({num_hit_slots}), &hit_slots));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output("cache_grad_values", TensorShape({num_hit_slots, in.dims.dim}),
                                  &hit_values));
    if (num_hit_slots == 0) return;
    OP_REQUIRES_OK(
        ctx, tt_gpu::FromLauncher(
                 tt_cuda_cached_backward_cache_grads(
                     &lk, &cache, num_hit_slots, hit_slots->flat<int64_t>().data(),
                     hit_values->flat<float>().data(), scratch.workspace, scratch.bytes, stream),
                 "TTEmbeddingBagCachedGrad GPU kernel"));
  }
};

TT_REGISTER_BAG_KERNELS(DEVICE_GPU, "TTKeras>TTEmbeddingBagCached", TTEmbeddingBagCachedGpuOp,
                        TTEmbeddingBagCachedGradGpuOp);

}  // namespace
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
