// CPU OpKernels of TTKeras>TTEmbeddingBag and its gradient: validate, then call tt_core.
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"
#include "tt_validation.h"

namespace tensorflow {
namespace {

using tt_keras::Combiner;
using tt_keras::LookupPlan;
using tt_keras::TTDims;

tt_keras::ParallelFor CpuParallelFor(OpKernelContext* ctx) {
  thread::ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int threads = pool->NumThreads();
  return [pool, threads](int64_t total, int64_t cost,
                         const std::function<void(int64_t, int64_t)>& fn) {
    if (total <= 0) return;
    // Fewer, larger shards than the adaptive cost model picks: with a handful of cores,
    // waking a worker per tiny shard costs more than the shard (measured: the adaptive
    // split made 2 threads slower than 1). Small loops run inline.
    constexpr int64_t kInlineFlops = 200000;
    if (threads <= 1 || total * cost < kInlineFlops) {
      fn(0, total);
      return;
    }
    const int64_t shards = std::min<int64_t>(total, 2 * threads);
    pool->ParallelFor(total,
                      thread::ThreadPool::SchedulingParams::Fixed((total + shards - 1) / shards),
                      fn);
  };
}

std::vector<const float*> CorePointers(const OpInputList& cores) {
  std::vector<const float*> ptrs;
  for (int t = 0; t < cores.size(); ++t) ptrs.push_back(cores[t].flat<float>().data());
  return ptrs;
}

template <typename Tid>
class TTEmbeddingBagOp : public OpKernel {
 public:
  explicit TTEmbeddingBagOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_rows", &num_rows_));
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    OP_REQUIRES(ctx, tt_keras::ParseCombiner(combiner, &combiner_),
                errors::InvalidArgument("combiner = '", combiner, "' is not one of none, sum, "
                                        "mean, sqrtn"));
  }

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagInputs<Tid>(ctx, combiner_, num_rows_, &bags));

    const int64_t out_rows = combiner_ == Combiner::kNone ? bags.nnz : bags.num_bags;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({out_rows, dims.dim}), &output));
    if (out_rows == 0) return;
    float* out = output->flat<float>().data();
    if (bags.nnz == 0) {
      std::fill(out, out + out_rows * dims.dim, 0.f);
      return;
    }

    const auto pfor = CpuParallelFor(ctx);
    // Per-thread scratch: reused across calls so large batches do not page-fault afresh.
    static thread_local LookupPlan plan;
    static thread_local std::vector<float> partials[tt_keras::kMaxCores + 1], rows;
    tt_keras::BuildPlan(dims, bags.ids, bags.nnz, &plan);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    tt_keras::ComputeRows(dims, core_ptrs.data(), plan, partials, &rows, pfor);
    tt_keras::PoolRows(dims, plan, combiner_, bags.row_splits, bags.num_bags, bags.weights,
                       bags.nnz, rows.data(), out, pfor);
  }

 private:
  int64_t num_rows_;
  Combiner combiner_;
};

template <typename Tid>
class TTEmbeddingBagGradOp : public OpKernel {
 public:
  explicit TTEmbeddingBagGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_rows", &num_rows_));
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    OP_REQUIRES(ctx, tt_keras::ParseCombiner(combiner, &combiner_),
                errors::InvalidArgument("combiner = '", combiner, "' is not one of none, sum, "
                                        "mean, sqrtn"));
  }

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagInputs<Tid>(ctx, combiner_, num_rows_, &bags));
    const Tensor& grad = ctx->input(0);
    const int64_t out_rows = combiner_ == Combiner::kNone ? bags.nnz : bags.num_bags;
    OP_REQUIRES(ctx,
                grad.dims() == 2 && grad.dim_size(0) == out_rows &&
                    grad.dim_size(1) == dims.dim,
                errors::InvalidArgument("grad has shape ", grad.shape().DebugString(),
                                        " but the forward output has shape [", out_rows, ",",
                                        dims.dim, "]"));

    OpOutputList core_grads;
    OP_REQUIRES_OK(ctx, ctx->output_list("core_grads", &core_grads));
    std::vector<float*> grad_ptrs;
    for (int t = 0; t < dims.k; ++t) {
      Tensor* g = nullptr;
      OP_REQUIRES_OK(ctx, core_grads.allocate(t, cores[t].shape(), &g));
      grad_ptrs.push_back(g->flat<float>().data());
      // An empty batch has no gradient; otherwise BackpropCores writes every element.
      if (bags.nnz == 0) std::fill(grad_ptrs.back(), grad_ptrs.back() + g->NumElements(), 0.f);
    }
    if (bags.nnz == 0) return;

    const auto pfor = CpuParallelFor(ctx);
    static thread_local LookupPlan plan;
    static thread_local std::vector<float> scale, leaf_grads;
    static thread_local std::vector<float> partials[tt_keras::kMaxCores + 1];
    static thread_local std::vector<int64_t> bag_of_pos;
    tt_keras::BuildPlan(dims, bags.ids, bags.nnz, &plan);
    tt_keras::PositionScales(combiner_, bags.row_splits, bags.num_bags, bags.weights,
                             bags.nnz, &scale, &bag_of_pos);
    tt_keras::AggregateLeafGrads(dims, plan, grad.flat<float>().data(), scale, bag_of_pos,
                                 &leaf_grads, pfor);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    tt_keras::BackpropCores(dims, core_ptrs.data(), plan, partials, &leaf_grads,
                            grad_ptrs.data(), pfor);
  }

 private:
  int64_t num_rows_;
  Combiner combiner_;
};

#define REGISTER_CPU(Tid)                                                          \
  REGISTER_KERNEL_BUILDER(Name("TTKeras>TTEmbeddingBag")                           \
                              .Device(DEVICE_CPU)                                  \
                              .TypeConstraint<Tid>("Tindices"),                    \
                          TTEmbeddingBagOp<Tid>);                                  \
  REGISTER_KERNEL_BUILDER(Name("TTKeras>TTEmbeddingBagGrad")                       \
                              .Device(DEVICE_CPU)                                  \
                              .TypeConstraint<Tid>("Tindices"),                    \
                          TTEmbeddingBagGradOp<Tid>);

REGISTER_CPU(int32);
REGISTER_CPU(int64_t);
#undef REGISTER_CPU

}  // namespace
}  // namespace tensorflow
