// Helpers shared by the TT CPU OpKernels: the thread-pool adapter, scratch memory from the
// op's allocator, the residual plan, core pointers.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"

namespace tt_keras {

// tt_core's ParallelFor on the op's intra-op thread pool (see MakeParallelFor).
inline ParallelFor CpuParallelFor(tensorflow::OpKernelContext* ctx) {
  tensorflow::thread::ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return MakeParallelFor(pool->NumThreads(),
                         [pool](std::function<void()> task) { pool->Schedule(std::move(task)); });
}

// Scratch memory of one Compute call from the op's allocator: a temporary tensor of
// `bytes` (a tt_core *WorkspaceBytes() query or a sum of them) viewed as a Workspace. It
// is TF's to track and free; `holder` must outlive every use of the workspace.
inline tensorflow::Status AllocateWorkspace(tensorflow::OpKernelContext* ctx, size_t bytes,
                                            tensorflow::Tensor* holder, Workspace* ws) {
  const int64_t size = static_cast<int64_t>(bytes + kWorkspaceAlign);
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tensorflow::DT_INT8, tensorflow::TensorShape({size}), holder));
  *ws = Workspace(holder->flat<int8_t>().data(), static_cast<size_t>(size));
  return tensorflow::OkStatus();
}

// What every TT bag kernel reads from its attrs: the table's rows and the combiner.
class BagKernelBase : public tensorflow::OpKernel {
 public:
  explicit BagKernelBase(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_rows", &num_rows_));
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    OP_REQUIRES(ctx, ParseCombiner(combiner, &combiner_),
                tensorflow::errors::InvalidArgument("combiner = '", combiner,
                                                    "' is not one of none, sum, mean, sqrtn"));
  }

 protected:
  int64_t num_rows_ = 0;
  Combiner combiner_ = Combiner::kNone;
};

// Allocates a forward op's residual outputs for its gradient (first_output: the serialized
// plan, then the partial products, which the caller computes straight into *partials).
// With plan == nullptr both are empty, which tells the gradient to rebuild them.
inline tensorflow::Status AllocateResiduals(tensorflow::OpKernelContext* ctx, int first_output,
                                            const TTDims& dims, const LookupPlan* plan,
                                            float** partials) {
  tensorflow::Tensor* plan_out = nullptr;
  tensorflow::Tensor* partials_out = nullptr;
  const int64_t plan_size = plan ? SerializedPlanSize(*plan) : 0;
  const int64_t partials_size = plan ? PartialsSize(dims, *plan) : 0;
  TF_RETURN_IF_ERROR(
      ctx->allocate_output(first_output, tensorflow::TensorShape({plan_size}), &plan_out));
  TF_RETURN_IF_ERROR(ctx->allocate_output(first_output + 1,
                                          tensorflow::TensorShape({partials_size}), &partials_out));
  if (plan != nullptr) SerializePlan(*plan, plan_out->flat<int64_t>().data());
  if (partials != nullptr) *partials = partials_out->flat<float>().data();
  return tensorflow::OkStatus();
}

// A gradient op's plan: the forward's (inputs "residual_plan" / "residual_partials"), checked,
// when it left one; else built afresh from ids (then *ready_partials stays nullptr and the
// backward recomputes the partial products). The plan's memory is `holder`'s (or the
// residual input's).
template <typename Tid>
tensorflow::Status ReadOrBuildPlan(tensorflow::OpKernelContext* ctx, const TTDims& dims,
                                   const Tid* ids, int64_t nnz, const ParallelFor& pfor,
                                   tensorflow::Tensor* holder, LookupPlan* plan,
                                   const float** ready_partials) {
  const tensorflow::Tensor* residual_plan;
  const tensorflow::Tensor* residual_partials;
  TF_RETURN_IF_ERROR(ctx->input("residual_plan", &residual_plan));
  TF_RETURN_IF_ERROR(ctx->input("residual_partials", &residual_partials));
  *ready_partials = nullptr;
  Workspace ws;
  if (residual_plan->NumElements() == 0) {
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, BuildPlanWorkspaceBytes(dims, nnz), holder, &ws));
    BuildPlan(dims, ids, nnz, &ws, plan, pfor);
    return tensorflow::OkStatus();
  }
  TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, DeserializePlanWorkspaceBytes(dims, nnz), holder, &ws));
  const std::string error = DeserializePlan(dims, nnz, residual_plan->flat<int64_t>().data(),
                                            residual_plan->NumElements(), &ws, plan);
  if (!error.empty()) return tensorflow::errors::InvalidArgument(error);
  if (residual_partials->NumElements() != PartialsSize(dims, *plan)) {
    return tensorflow::errors::InvalidArgument(
        "residual_partials has ", residual_partials->NumElements(), " floats; the plan needs ",
        PartialsSize(dims, *plan));
  }
  *ready_partials = residual_partials->flat<float>().data();
  return tensorflow::OkStatus();
}

inline std::vector<const float*> CorePointers(const tensorflow::OpInputList& cores) {
  std::vector<const float*> ptrs;
  for (int t = 0; t < cores.size(); ++t) ptrs.push_back(cores[t].flat<float>().data());
  return ptrs;
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
