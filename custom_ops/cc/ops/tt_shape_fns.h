// Shape-function helpers shared by the TT op registrations.
#ifndef TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_
#define TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_

#include "tensorflow/core/framework/shape_inference.h"

namespace tt_keras {

// The shape of float input `input`: the tensor's, or for a resource input (Tcores =
// resource) the shape its variable was created with, when the graph knows it (else rank 4
// or 2, dims unknown: `rank`).
inline absl::Status FloatInputShape(tensorflow::shape_inference::InferenceContext* c, int input,
                                    int rank, tensorflow::shape_inference::ShapeHandle* shape) {
  tensorflow::DataType type = tensorflow::DT_FLOAT;
  TF_RETURN_IF_ERROR(c->GetAttr("Tcores", &type));
  if (type != tensorflow::DT_RESOURCE) return c->WithRank(c->input(input), rank, shape);
  const auto* handle = c->input_handle_shapes_and_types(input);
  if (handle == nullptr || handle->empty()) {
    *shape = c->UnknownShapeOfRank(rank);
    return absl::OkStatus();
  }
  return c->WithRank((*handle)[0].shape, rank, shape);
}

// D = prod over the cores (inputs first_core .. first_core + num_cores - 1) of dim 2 (q_t);
// unknown if any core's q_t is unknown.
inline absl::Status EmbeddingDim(tensorflow::shape_inference::InferenceContext* c, int first_core,
                                 int num_cores, tensorflow::shape_inference::DimensionHandle* dim) {
  *dim = c->MakeDim(1);
  for (int t = 0; t < num_cores; ++t) {
    tensorflow::shape_inference::ShapeHandle core;
    TF_RETURN_IF_ERROR(FloatInputShape(c, first_core + t, 4, &core));
    TF_RETURN_IF_ERROR(c->Multiply(*dim, c->Dim(core, 2), dim));
  }
  return absl::OkStatus();
}

// A gradient op's core gradients, outputs first_output .. + num_cores - 1: each shaped
// like its core (the variable's shape when Tcores = resource).
inline absl::Status CoreGradShapes(tensorflow::shape_inference::InferenceContext* c, int first_core,
                                   int num_cores, int first_output) {
  for (int t = 0; t < num_cores; ++t) {
    tensorflow::shape_inference::ShapeHandle core;
    TF_RETURN_IF_ERROR(FloatInputShape(c, first_core + t, 4, &core));
    c->set_output(first_output + t, core);
  }
  return absl::OkStatus();
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_OPS_TT_SHAPE_FNS_H_
