// Op registrations of the cached TT embedding bag; the contract is docs/cache.md.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tt_shape_fns.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

Status CachedForwardShape(InferenceContext* c) {
  int num_cores;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &num_cores));
  std::string combiner;
  TF_RETURN_IF_ERROR(c->GetAttr("combiner", &combiner));
  ShapeHandle cache_ids, cache_rows, indices, splits, weights;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores), 1, &cache_ids));
  TF_RETURN_IF_ERROR(tt_keras::FloatInputShape(c, num_cores + 1, 2, &cache_rows));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores + 2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores + 3), 1, &splits));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(num_cores + 4), 1, &weights));
  DimensionHandle dim, rows, unused;
  TF_RETURN_IF_ERROR(tt_keras::EmbeddingDim(c, 0, num_cores, &dim));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(cache_rows, 0), c->Dim(cache_ids, 0), &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(cache_rows, 1), dim, &dim));
  if (combiner == "none") {
    rows = c->Dim(indices, 0);
  } else {
    TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &rows));
  }
  c->set_output(0, c->Matrix(rows, dim));
  c->set_output(1, c->Scalar());
  c->set_output(2, c->Vector(c->UnknownDim()));
  c->set_output(3, c->Vector(c->UnknownDim()));
  c->set_output(4, c->Vector(c->UnknownDim()));
  return OkStatus();
}

}  // namespace

REGISTER_OP("TTKeras>TTEmbeddingBagCached")
    .Input("cores: N * Tcores")
    .Input("cache_ids: int64")
    .Input("cache_rows: Tcores")
    .Input("indices: Tindices")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Output("output: float")
    .Output("num_hits: int64")
    .Output("residual_slots: int32")
    .Output("residual_plan: int64")
    .Output("residual_partials: float")
    .Attr("N: int >= 2")
    .Attr("Tcores: {float, resource} = DT_FLOAT")
    .Attr("Tindices: {int32, int64}")
    .Attr("num_rows: int >= 1")
    .Attr("combiner: {'none', 'sum', 'mean', 'sqrtn'}")
    .SetShapeFn(CachedForwardShape)
    .Doc(R"doc(
Looks up rows of a TT-compressed table with a cache of uncompressed rows, and pools them.

cores: the TT cores, core t shaped (p_t, r_{t-1}, q_t, r_t), r_0 = r_N = 1: float32
  tensors, or (Tcores = resource) handles of float32 variables, read in place, as are
  then the cache rows.
cache_ids: [C] sorted ids of the cached rows; entries >= num_rows are empty slots.
cache_rows: [C, D] the cached rows: W[cache_ids[s]] is cache_rows[s].
indices: flat ids in [0, num_rows).
row_splits: bag boundaries (ignored when combiner is "none").
weights: per-id weights, or an empty vector for all ones.
output: [num_bags, D] pooled rows, or [nnz, D] per-id rows when combiner is "none".
num_hits: how many of the indices were served by the cache.
residual_slots, residual_plan, residual_partials: each index's cache slot (-1 for a miss),
  the misses' prefix tree and partial products, handed to TTEmbeddingBagCachedGrad so it
  need not rebuild them (a kernel may leave them empty; the gradient then recomputes them).
)doc");

REGISTER_OP("TTKeras>TTEmbeddingBagCachedGrad")
    .Input("grad: float")
    .Input("cores: N * Tcores")
    .Input("cache_ids: int64")
    .Input("indices: Tindices")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Input("residual_slots: int32")
    .Input("residual_plan: int64")
    .Input("residual_partials: float")
    .Output("core_grads: N * float")
    .Output("cache_grad_slots: int64")
    .Output("cache_grad_values: float")
    .Attr("N: int >= 2")
    .Attr("Tcores: {float, resource} = DT_FLOAT")
    .Attr("Tindices: {int32, int64}")
    .Attr("num_rows: int >= 1")
    .Attr("combiner: {'none', 'sum', 'mean', 'sqrtn'}")
    .SetShapeFn([](InferenceContext* c) {
      int num_cores;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &num_cores));
      TF_RETURN_IF_ERROR(tt_keras::CoreGradShapes(c, 1, num_cores, 0));
      DimensionHandle dim;
      TF_RETURN_IF_ERROR(tt_keras::EmbeddingDim(c, 1, num_cores, &dim));
      DimensionHandle hits = c->UnknownDim();
      c->set_output(num_cores, c->Vector(hits));
      c->set_output(num_cores + 1, c->Matrix(hits, dim));
      return OkStatus();
    })
    .Doc(R"doc(
Gradients of TTEmbeddingBagCached: dense core gradients from the cache misses, and the
cache rows' gradient as (distinct slots hit, ascending; one summed row per slot).
)doc");

}  // namespace tensorflow
