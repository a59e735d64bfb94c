// Op registrations of the TT embedding-bag family; the contract is docs/ops.md.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tt_shape_fns.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

Status ForwardShape(InferenceContext* c) {
  int num_cores;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &num_cores));
  std::string combiner;
  TF_RETURN_IF_ERROR(c->GetAttr("combiner", &combiner));
  ShapeHandle indices, splits, weights;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores + 1), 1, &splits));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores + 2), 1, &weights));
  DimensionHandle dim, rows;
  TF_RETURN_IF_ERROR(tt_keras::EmbeddingDim(c, 0, num_cores, &dim));
  if (combiner == "none") {
    rows = c->Dim(indices, 0);
  } else {
    TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &rows));
  }
  c->set_output(0, c->Matrix(rows, dim));
  c->set_output(1, c->Vector(c->UnknownDim()));
  c->set_output(2, c->Vector(c->UnknownDim()));
  return OkStatus();
}

}  // namespace

REGISTER_OP("TTKeras>TTEmbeddingBag")
    .Input("cores: N * Tcores")
    .Input("indices: Tindices")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Output("output: float")
    .Output("residual_plan: int64")
    .Output("residual_partials: float")
    .Attr("N: int >= 2")
    .Attr("Tcores: {float, resource} = DT_FLOAT")
    .Attr("Tindices: {int32, int64}")
    .Attr("num_rows: int >= 1")
    .Attr("combiner: {'none', 'sum', 'mean', 'sqrtn'}")
    .SetShapeFn(ForwardShape)
    .Doc(R"doc(
Looks up rows of a TT-compressed embedding table and pools them into bags.

cores: the TT cores, core t shaped (p_t, r_{t-1}, q_t, r_t), r_0 = r_N = 1: float32
  tensors, or (Tcores = resource) handles of float32 variables, read in place.
indices: flat ids in [0, num_rows).
row_splits: bag boundaries (ignored when combiner is "none").
weights: per-id weights, or an empty vector for all ones.
output: [num_bags, D] pooled rows, or [nnz, D] per-id rows when combiner is "none".
residual_plan, residual_partials: the distinct-id prefix tree and the partial products of
  the leading cores, handed to TTEmbeddingBagGrad so it need not rebuild them (a kernel may
  leave them empty; the gradient then recomputes them).
)doc");

REGISTER_OP("TTKeras>TTEmbeddingBagGrad")
    .Input("grad: float")
    .Input("cores: N * Tcores")
    .Input("indices: Tindices")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Input("residual_plan: int64")
    .Input("residual_partials: float")
    .Output("core_grads: N * float")
    .Attr("N: int >= 2")
    .Attr("Tcores: {float, resource} = DT_FLOAT")
    .Attr("Tindices: {int32, int64}")
    .Attr("num_rows: int >= 1")
    .Attr("combiner: {'none', 'sum', 'mean', 'sqrtn'}")
    .SetShapeFn([](InferenceContext* c) {
      int num_cores;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &num_cores));
      return tt_keras::CoreGradShapes(c, 1, num_cores, 0);
    })
    .Doc(R"doc(
Gradients of TTEmbeddingBag with respect to its cores (dense, shaped like the cores;
Tcores = resource reads the variables in place, as the forward does).
)doc");

}  // namespace tensorflow
