// CPU OpKernels of TTKeras>TTEmbeddingBag and its gradient: validate, then call tt_core.
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"
#include "tt_op_util.h"
#include "tt_validation.h"

namespace tensorflow {
namespace {

using tt_keras::Combiner;
using tt_keras::LookupPlan;
using tt_keras::TTDims;

using tt_keras::CorePointers;
using tt_keras::CpuParallelFor;

template <typename Tid>
class TTEmbeddingBagOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

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
    float* out = output->flat<float>().data();
    Tensor *plan_out = nullptr, *partials_out = nullptr;
    if (bags.nnz == 0) {
      std::fill(out, out + out_rows * dims.dim, 0.f);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({0}), &plan_out));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({0}), &partials_out));
      return;
    }

    const auto pfor = CpuParallelFor(ctx);
    // Per-thread scratch: reused across calls so large batches do not page-fault afresh.
    static thread_local LookupPlan plan;
    static thread_local tt_keras::Floats partials[tt_keras::kMaxCores + 1], rows;
    tt_keras::BuildPlan(dims, bags.ids, bags.nnz, &plan);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    tt_keras::ComputeRows(dims, core_ptrs.data(), plan, partials, &rows, pfor);
    tt_keras::PoolRows(dims, plan, combiner_, bags.row_splits, bags.num_bags, bags.weights,
                       bags.nnz, rows.data(), out, pfor);

    // Residuals for the gradient: it then skips the sort and the leading cores' GEMMs.
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            1, TensorShape({tt_keras::SerializedPlanSize(plan)}), &plan_out));
    tt_keras::SerializePlan(plan, plan_out->flat<int64_t>().data());
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            2, TensorShape({tt_keras::PartialsSize(dims, plan)}), &partials_out));
    float* dst = partials_out->flat<float>().data();
    for (int level = 1; level < dims.k; ++level) {
      std::memcpy(dst, partials[level].data(), sizeof(float) * partials[level].size());
      dst += partials[level].size();
    }
  }
};

template <typename Tid>
class TTEmbeddingBagGradOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList cores;
    OP_REQUIRES_OK(ctx, ctx->input_list("cores", &cores));
    TTDims dims;
    OP_REQUIRES_OK(ctx, tt_keras::DimsFromCores(cores, num_rows_, &dims));
    tt_keras::BagInputs<Tid> bags;
    OP_REQUIRES_OK(ctx, tt_keras::ValidateBagInputs<Tid>(ctx, combiner_, num_rows_, &bags));
    const Tensor& grad = ctx->input(0);
    OP_REQUIRES_OK(ctx, tt_keras::ValidateGradShape<Tid>(grad, combiner_, bags, dims.dim));

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
    static thread_local tt_keras::Floats scale, leaf_grads;
    static thread_local tt_keras::Floats partials[tt_keras::kMaxCores + 1];
    static thread_local std::vector<int64_t> bag_of_pos;
    // The forward's residuals, when it left them, spare the sort and the leading GEMMs.
    const Tensor *residual_plan_ptr, *residual_partials_ptr;
    OP_REQUIRES_OK(ctx, ctx->input("residual_plan", &residual_plan_ptr));
    OP_REQUIRES_OK(ctx, ctx->input("residual_partials", &residual_partials_ptr));
    const Tensor& residual_plan = *residual_plan_ptr;
    const Tensor& residual_partials = *residual_partials_ptr;
    const float* ready_partials = nullptr;
    if (residual_plan.NumElements() > 0) {
      const std::string error = tt_keras::DeserializePlan(
          dims, bags.nnz, residual_plan.flat<int64_t>().data(), residual_plan.NumElements(),
          &plan);
      OP_REQUIRES(ctx, error.empty(), errors::InvalidArgument(error));
      OP_REQUIRES(ctx, residual_partials.NumElements() == tt_keras::PartialsSize(dims, plan),
                  errors::InvalidArgument("residual_partials has ",
                                          residual_partials.NumElements(), " floats; the plan "
                                          "needs ", tt_keras::PartialsSize(dims, plan)));
      ready_partials = residual_partials.flat<float>().data();
    } else {
      tt_keras::BuildPlan(dims, bags.ids, bags.nnz, &plan);
    }
    tt_keras::PositionScales(combiner_, bags.row_splits, bags.num_bags, bags.weights,
                             bags.nnz, &scale, &bag_of_pos);
    tt_keras::AggregateLeafGrads(dims, plan, grad.flat<float>().data(), scale, bag_of_pos,
                                 &leaf_grads, pfor);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    tt_keras::BackpropCores(dims, core_ptrs.data(), plan, partials, &leaf_grads,
                            grad_ptrs.data(), pfor, ready_partials);
  }
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
