// Helpers shared by the TT CPU OpKernels: the thread-pool adapter, scratch memory from the
// op's allocator, the residual plan, core pointers.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"
#include "tt_validation.h"

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

// The float values of a kernel's inputs (Tcores = float), or of the variables its
// resource inputs name (Tcores = resource), in input order. Variables are read in place:
// a ReadVariableOp in front of the kernel would copy a whole variable on every read once
// an optimizer has updated it sparsely (TF's copy-on-read mode), as every cache-row update
// does. Their locks are held shared until this object goes, so
// no update writes into them while the kernel reads; they are taken in address order, as
// TF's training ops take theirs, so that two kernels cannot deadlock.
class FloatInputs {
 public:
  FloatInputs() = default;
  FloatInputs(const FloatInputs&) = delete;
  FloatInputs& operator=(const FloatInputs&) = delete;
  ~FloatInputs() {
    values_.clear();
    for (tensorflow::mutex* mu : locked_) mu->unlock_shared();
  }

  // Reads the inputs `names` (each one input or a list) into values(), in order; once per
  // kernel call, so that all its variables are locked together.
  absl::Status Read(tensorflow::OpKernelContext* ctx, const std::vector<const char*>& names) {
    std::vector<std::pair<size_t, tensorflow::core::RefCountPtr<tensorflow::Var>>> vars;
    std::vector<std::string> labels;  // the argument each value is, for messages
    for (const char* name : names) {
      int start = 0, stop = 0;
      TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(name, &start, &stop));
      for (int i = start; i < stop; ++i) {
        labels.push_back(std::string(name) == "cores" ? "cores[" + std::to_string(i - start) + "]"
                                                      : std::string(name));
        const tensorflow::Tensor& t = ctx->input(i);
        values_.push_back(t);
        if (t.dtype() != tensorflow::DT_RESOURCE) continue;
        tensorflow::core::RefCountPtr<tensorflow::Var> var;
        TF_RETURN_IF_ERROR(
            tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, i), &var));
        vars.emplace_back(values_.size() - 1, std::move(var));
      }
    }
    std::vector<tensorflow::mutex*> mus;
    for (const auto& v : vars) mus.push_back(v.second->mu());
    std::sort(mus.begin(), mus.end());
    mus.erase(std::unique(mus.begin(), mus.end()), mus.end());
    for (tensorflow::mutex* mu : mus) {
      mu->lock_shared();
      locked_.push_back(mu);
    }
    for (const auto& [at, var] : vars) {
      if (!var->is_initialized) {
        return tensorflow::errors::FailedPrecondition(labels[at],
                                                      " is a variable that is not initialized");
      }
      if (var->tensor()->dtype() != tensorflow::DT_FLOAT) {
        return tensorflow::errors::InvalidArgument(
            labels[at], " must be a float32 variable, got ",
            tensorflow::DataTypeString(var->tensor()->dtype()));
      }
      values_[at] = *var->tensor();
    }
    return absl::OkStatus();
  }

  const std::vector<tensorflow::Tensor>& values() const { return values_; }

 private:
  std::vector<tensorflow::Tensor> values_;
  std::vector<tensorflow::mutex*> locked_;
};

// What a TT bag kernel starts from: the cores, the table's dims they define, the bags.
template <typename Tid>
struct BagOpInputs {
  FloatInputs values;  // the cores, then any extra float inputs
  std::vector<tensorflow::Tensor> cores;
  TTDims dims;
  BagInputs<Tid> bags;
  int64_t out_rows = 0;  // rows of the forward output: one a bag, or one an id
};

// What every TT bag kernel reads from its attrs (the table's rows and the combiner), and
// its inputs, checked the same way by every kernel.
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
  // The inputs, their shapes checked; with `host_contents` the ids and splits too (the CPU
  // kernels: the GPU kernels check them on the device).
  // `extra_floats` names single float inputs read with the cores (under the same locks
  // when they are variables); their values follow the cores' in in->values.
  template <typename Tid>
  absl::Status ReadInputs(tensorflow::OpKernelContext* ctx, bool host_contents,
                          BagOpInputs<Tid>* in,
                          std::initializer_list<const char*> extra_floats = {}) const {
    std::vector<const char*> names = {"cores"};
    names.insert(names.end(), extra_floats.begin(), extra_floats.end());
    TF_RETURN_IF_ERROR(in->values.Read(ctx, names));
    // Each extra input is one tensor: the cores are all the values before them.
    const std::vector<tensorflow::Tensor>& values = in->values.values();
    in->cores.assign(values.begin(), values.end() - extra_floats.size());
    TF_RETURN_IF_ERROR(DimsFromCores(in->cores, num_rows_, &in->dims));
    TF_RETURN_IF_ERROR(host_contents ? ValidateBagInputs<Tid>(ctx, combiner_, num_rows_, &in->bags)
                                     : ValidateBagShapes<Tid>(ctx, combiner_, &in->bags));
    in->out_rows = combiner_ == Combiner::kNone ? in->bags.nnz : in->bags.num_bags;
    return absl::OkStatus();
  }

  // A gradient op's incoming gradient (input 0), shaped like the forward's output.
  template <typename Tid>
  absl::Status ReadGrad(tensorflow::OpKernelContext* ctx, const BagOpInputs<Tid>& in,
                        const tensorflow::Tensor** grad) const {
    *grad = &ctx->input(0);
    return ValidateGradShape<Tid>(**grad, combiner_, in.bags, in.dims.dim);
  }

  // The forward's output 0, [out_rows, dim].
  template <typename Tid>
  static absl::Status AllocateOutput(tensorflow::OpKernelContext* ctx, const BagOpInputs<Tid>& in,
                                     tensorflow::Tensor** output) {
    return ctx->allocate_output(0, tensorflow::TensorShape({in.out_rows, in.dims.dim}), output);
  }

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

// Allocates a gradient op's output list "core_grads", one tensor shaped like each core,
// into *ptrs; zeroed when `zero` (a call whose backward writes none of them).
inline tensorflow::Status AllocateCoreGrads(tensorflow::OpKernelContext* ctx,
                                            const std::vector<tensorflow::Tensor>& cores, bool zero,
                                            std::vector<float*>* ptrs) {
  tensorflow::OpOutputList core_grads;
  TF_RETURN_IF_ERROR(ctx->output_list("core_grads", &core_grads));
  for (int t = 0; t < static_cast<int>(cores.size()); ++t) {
    tensorflow::Tensor* g = nullptr;
    TF_RETURN_IF_ERROR(core_grads.allocate(t, cores[t].shape(), &g));
    ptrs->push_back(g->flat<float>().data());
    if (zero) std::fill(ptrs->back(), ptrs->back() + g->NumElements(), 0.f);
  }
  return tensorflow::OkStatus();
}

inline std::vector<const float*> CorePointers(const std::vector<tensorflow::Tensor>& cores) {
  std::vector<const float*> ptrs;
  for (const tensorflow::Tensor& core : cores) ptrs.push_back(core.flat<float>().data());
  return ptrs;
}

}  // namespace tt_keras

// Registers a TT bag op's kernel `Op<Tid>` and its gradient op's `GradOp<Tid>` (the op named
// op_name "Grad") on `device`, for int32 and int64 ids; expanded inside namespace tensorflow
// (REGISTER_KERNEL_BUILDER pastes its first token, so Name stays unqualified). One kernel
// serves both Tcores: resource handles live in host memory on every device.
#define TT_REGISTER_BAG_KERNELS_FOR(device, op_name, Op, GradOp, Tid)                             \
  REGISTER_KERNEL_BUILDER(Name(op_name).Device(device).TypeConstraint<Tid>("Tindices"), Op<Tid>); \
  REGISTER_KERNEL_BUILDER(Name(op_name "Grad").Device(device).TypeConstraint<Tid>("Tindices"),    \
                          GradOp<Tid>)
#define TT_REGISTER_BAG_KERNELS(device, op_name, Op, GradOp)         \
  TT_REGISTER_BAG_KERNELS_FOR(device, op_name, Op, GradOp, int32_t); \
  TT_REGISTER_BAG_KERNELS_FOR(device, op_name, Op, GradOp, int64_t)

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
