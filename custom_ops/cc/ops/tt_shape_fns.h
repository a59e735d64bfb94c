// Shape-function helpers shared by the TT op registrations.
#ifndef TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_
#define TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_

#include "tensorflow/core/framework/shape_inference.h"

namespace tt_keras {

// D = prod over the cores (inputs first_core .. first_core + num_cores - 1) of dim 2 (q_t);
// unknown if any core's q_t is unknown.
inline absl::Status EmbeddingDim(tensorflow::shape_inference::InferenceContext* c, int first_core,
                                 int num_cores, tensorflow::shape_inference::DimensionHandle* dim) {
  *dim = c->MakeDim(1);
  for (int t = 0; t < num_cores; ++t) {
    tensorflow::shape_inference::ShapeHandle core;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(first_core + t), 4, &core));
    TF_RETURN_IF_ERROR(c->Multiply(*dim, c->Dim(core, 2), dim));
  }
  return absl::OkStatus();
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_
