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

using tt_keras::AllocateWorkspace;
using tt_keras::ArrayBytes;
using tt_keras::CorePointers;
using tt_keras::CpuParallelFor;
using tt_keras::Workspace;

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
    if (bags.nnz == 0) {
      std::fill(out, out + out_rows * dims.dim, 0.f);
      OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 1, dims, nullptr, nullptr));
      return;
    }

    const auto pfor = CpuParallelFor(ctx);
    LookupPlan plan;
    Tensor plan_memory;
    Workspace plan_ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, tt_keras::BuildPlanWorkspaceBytes(dims, bags.nnz),
                                          &plan_memory, &plan_ws));
    tt_keras::BuildPlan(dims, bags.ids, bags.nnz, &plan_ws, &plan, pfor);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    // The partial products go straight into the residual output for the gradient, which
    // then skips the sort and the leading cores' GEMMs.
    float* partials = nullptr;
    OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 1, dims, &plan, &partials));
    const int64_t rows_size = plan.num_nodes(dims.k) * dims.dim;
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx,
                                          ArrayBytes<float>(rows_size) +
                                              tt_keras::ComputeRowsWorkspaceBytes(dims, plan) +
                                              tt_keras::PoolRowsWorkspaceBytes(bags.nnz),
                                          &memory, &ws));
    float* rows = ws.Take<float>(rows_size);
    tt_keras::ComputeRows(dims, core_ptrs.data(), plan, partials, rows, &ws, pfor);
    tt_keras::PoolRows(dims, plan, combiner_, bags.row_splits, bags.num_bags, bags.weights,
                       bags.nnz, rows, out, &ws, pfor);
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
    // The forward's residuals, when it left them, spare the sort and the leading GEMMs.
    LookupPlan plan;
    Tensor plan_memory;
    const float* ready_partials = nullptr;
    OP_REQUIRES_OK(ctx, tt_keras::ReadOrBuildPlan(ctx, dims, bags.ids, bags.nnz, pfor, &plan_memory,
                                                  &plan, &ready_partials));
    const int64_t num_leaf_grads = plan.num_nodes(dims.k) * dims.dim;
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(
        ctx, AllocateWorkspace(
                 ctx,
                 ArrayBytes<float>(bags.nnz) + ArrayBytes<int64_t>(bags.nnz) +
                     ArrayBytes<float>(num_leaf_grads) +
                     tt_keras::BackpropCoresWorkspaceBytes(dims, plan, ready_partials != nullptr),
                 &memory, &ws));
    float* scale = ws.Take<float>(bags.nnz);
    int64_t* bag_of_pos = ws.Take<int64_t>(bags.nnz);
    float* leaf_grads = ws.Take<float>(num_leaf_grads);
    tt_keras::PositionScales(combiner_, bags.row_splits, bags.num_bags, bags.weights, bags.nnz,
                             scale, bag_of_pos, pfor);
    tt_keras::AggregateLeafGrads(dims, plan, grad.flat<float>().data(), scale, bag_of_pos,
                                 leaf_grads, pfor);
    const std::vector<const float*> core_ptrs = CorePointers(cores);
    tt_keras::BackpropCores(dims, core_ptrs.data(), plan, leaf_grads, grad_ptrs.data(), &ws, pfor,
                            ready_partials);
  }
};

#define REGISTER_CPU(Tid)                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TTKeras>TTEmbeddingBag").Device(DEVICE_CPU).TypeConstraint<Tid>("Tindices"),     \
      TTEmbeddingBagOp<Tid>);                                                                \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TTKeras>TTEmbeddingBagGrad").Device(DEVICE_CPU).TypeConstraint<Tid>("Tindices"), \
      TTEmbeddingBagGradOp<Tid>);

REGISTER_CPU(int32);
REGISTER_CPU(int64_t);
#undef REGISTER_CPU

}  // namespace
}  // namespace tensorflow
