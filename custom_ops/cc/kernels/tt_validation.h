// Input validation shared by the TT OpKernels. Every message names the argument and the
// offending value, and nothing is read out of bounds: ids and splits are checked before use.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_VALIDATION_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_VALIDATION_H_

#include <limits>
#include <string>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tt_core.h"

namespace tt_keras {

// Reads the TT shape off the cores' shapes (host-side metadata only, so GPU kernels use it
// too) and checks that the ranks chain and the row factors can hold num_rows.
template <typename Cores>  // an OpInputList or a std::vector<Tensor>
absl::Status DimsFromCores(const Cores& cores, int64_t num_rows, TTDims* dims) {
  namespace errors = tensorflow::errors;
  const int k = cores.size();
  if (k < 2 || k > kMaxCores) {
    return errors::InvalidArgument("cores: expected 2 to 4 cores, got ", k);
  }
  dims->k = k;
  for (int t = 0; t < k; ++t) {
    const tensorflow::Tensor& c = cores[t];
    if (c.dims() != 4) {
      return errors::InvalidArgument("cores[", t,
                                     "] must have rank 4 (p, r_in, q, r_out), "
                                     "got shape ",
                                     c.shape().DebugString());
    }
    dims->p[t] = c.dim_size(0);
    dims->q[t] = c.dim_size(2);
    if (t == 0) dims->r[0] = c.dim_size(1);
    if (c.dim_size(1) != dims->r[t]) {
      return errors::InvalidArgument("cores[", t, "] has input rank ", c.dim_size(1), " but cores[",
                                     t - 1, "] has output rank ", dims->r[t]);
    }
    dims->r[t + 1] = c.dim_size(3);
  }
  const std::string error = dims->Finalize();
  if (!error.empty()) {
    return errors::InvalidArgument("cores: ", error, " (shapes ", cores[0].shape().DebugString(),
                                   " ... ", cores[k - 1].shape().DebugString(), ")");
  }
  if (dims->padded_rows < num_rows) {
    return errors::InvalidArgument("cores hold ", dims->padded_rows, " rows but num_rows is ",
                                   num_rows);
  }
  return absl::OkStatus();
}

template <typename Tid>
struct BagInputs {
  const Tid* ids = nullptr;
  int64_t nnz = 0;
  const int64_t* row_splits = nullptr;
  int64_t num_bags = 0;
  const float* weights = nullptr;  // null: all ones
};

// A bag op's inputs "indices", "row_splits" and "weights", unchecked.
struct BagTensors {
  const tensorflow::Tensor* indices = nullptr;
  const tensorflow::Tensor* splits = nullptr;
  const tensorflow::Tensor* weights = nullptr;
};

inline absl::Status ReadBagTensors(tensorflow::OpKernelContext* ctx, BagTensors* in) {
  TF_RETURN_IF_ERROR(ctx->input("indices", &in->indices));
  TF_RETURN_IF_ERROR(ctx->input("row_splits", &in->splits));
  return ctx->input("weights", &in->weights);
}

// Shapes of indices / row_splits / weights (host metadata only).
template <typename Tid>
absl::Status ValidateBagShapes(tensorflow::OpKernelContext* ctx, Combiner combiner,
                               BagInputs<Tid>* bags) {
  namespace errors = tensorflow::errors;
  BagTensors in;
  TF_RETURN_IF_ERROR(ReadBagTensors(ctx, &in));
  const tensorflow::Tensor& indices = *in.indices;
  const tensorflow::Tensor& splits = *in.splits;
  const tensorflow::Tensor& weights = *in.weights;
  if (indices.dims() != 1) {
    return errors::InvalidArgument("indices must be a vector, got shape ",
                                   indices.shape().DebugString());
  }
  bags->nnz = indices.dim_size(0);
  if (weights.dims() != 1 || (weights.dim_size(0) != 0 && weights.dim_size(0) != bags->nnz)) {
    return errors::InvalidArgument("weights has shape ", weights.shape().DebugString(),
                                   " but indices has ", bags->nnz,
                                   " entries (pass an empty vector for no weights)");
  }
  if (combiner == Combiner::kNone && weights.dim_size(0) != 0) {
    return errors::InvalidArgument(
        "weights need a combiner (sum, mean or sqrtn); combiner is "
        "none");
  }
  if (splits.dims() != 1) {
    return errors::InvalidArgument("row_splits must be a vector, got shape ",
                                   splits.shape().DebugString());
  }
  if (combiner != Combiner::kNone && splits.dim_size(0) < 1) {
    return errors::InvalidArgument("row_splits must hold at least one entry (0)");
  }
  bags->num_bags = combiner == Combiner::kNone ? 0 : splits.dim_size(0) - 1;
  return absl::OkStatus();
}

// Shapes plus contents: every id in [0, num_rows), splits start at 0, never decrease and end
// at nnz. Host memory only (the CPU kernels).
template <typename Tid>
absl::Status ValidateBagInputs(tensorflow::OpKernelContext* ctx, Combiner combiner,
                               int64_t num_rows, BagInputs<Tid>* bags) {
  namespace errors = tensorflow::errors;
  TF_RETURN_IF_ERROR(ValidateBagShapes<Tid>(ctx, combiner, bags));
  BagTensors in;
  TF_RETURN_IF_ERROR(ReadBagTensors(ctx, &in));
  const tensorflow::Tensor& indices = *in.indices;
  const tensorflow::Tensor& splits = *in.splits;
  const tensorflow::Tensor& weights = *in.weights;
  bags->ids = indices.flat<Tid>().data();
  std::string error = ValidateIds(bags->ids, bags->nnz, num_rows);
  if (!error.empty()) return errors::InvalidArgument(error);
  if (weights.dim_size(0) != 0) bags->weights = weights.flat<float>().data();
  if (combiner == Combiner::kNone) return absl::OkStatus();
  bags->row_splits = splits.flat<int64_t>().data();
  error = ValidateRowSplits(bags->row_splits, bags->num_bags, bags->nnz);
  if (!error.empty()) return errors::InvalidArgument(error);
  return absl::OkStatus();
}

// The gradient fed to a backward op must have the forward output's shape.
template <typename Tid>
absl::Status ValidateGradShape(const tensorflow::Tensor& grad, Combiner combiner,
                               const BagInputs<Tid>& bags, int64_t dim) {
  const int64_t out_rows = combiner == Combiner::kNone ? bags.nnz : bags.num_bags;
  if (grad.dims() != 2 || grad.dim_size(0) != out_rows || grad.dim_size(1) != dim) {
    return tensorflow::errors::InvalidArgument("grad has shape ", grad.shape().DebugString(),
                                               " but the forward output has shape [", out_rows, ",",
                                               dim, "]");
  }
  return absl::OkStatus();
}

// A cache's shapes (host-side metadata only, so GPU kernels use it too): cache_ids a vector
// of at most 2^31 - 1 slots (slots travel as int32); cache_rows, when given, [slots, dim].
inline absl::Status ValidateCacheShapes(const tensorflow::Tensor& cache_ids,
                                        const tensorflow::Tensor* cache_rows, int64_t dim) {
  namespace errors = tensorflow::errors;
  if (cache_ids.dims() != 1) {
    return errors::InvalidArgument("cache_ids must be a vector, got shape ",
                                   cache_ids.shape().DebugString());
  }
  const int64_t cache_size = cache_ids.dim_size(0);
  if (cache_size > std::numeric_limits<int32_t>::max()) {
    return errors::InvalidArgument("cache_ids has ", cache_size,
                                   " slots; at most 2^31 - 1 "
                                   "are supported");
  }
  if (cache_rows != nullptr && (cache_rows->dims() != 2 || cache_rows->dim_size(0) != cache_size ||
                                cache_rows->dim_size(1) != dim)) {
    return errors::InvalidArgument("cache_rows has shape ", cache_rows->shape().DebugString(),
                                   " but cache_ids has ", cache_size,
                                   " slots and the cores give rows of ", dim,
                                   " columns: expected [", cache_size, ",", dim, "]");
  }
  return absl::OkStatus();
}

// The cached ops' cache inputs: "cache_ids", and "cache_rows" when `rows` is given (the
// gradient ops take none), their shapes checked.
// `rows`: the cache rows' values (read with the cores, tt_op_util.h's FloatInputs), or
// nullptr for a kernel that takes none.
inline absl::Status ReadCacheInputs(tensorflow::OpKernelContext* ctx, int64_t dim,
                                    const tensorflow::Tensor** ids,
                                    const tensorflow::Tensor* rows) {
  TF_RETURN_IF_ERROR(ctx->input("cache_ids", ids));
  return ValidateCacheShapes(**ids, rows, dim);
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_VALIDATION_H_
