// Internal to the TT core (tt_core.cc, tt_core_kernels.h): the choices the kernels make
// that their workspace-size queries must mirror, and small helpers both use.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_INTERNAL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_INTERNAL_H_

#include <algorithm>
#include <cstdint>

#include "tt_core.h"

namespace tt_keras {
namespace internal {

// The radix sort's digits have at most 12 bits: two passes cover the ids of a 16M-row
// table, and 4096 counters still sit in L1 (measured: 0.54 ms vs 0.70 ms with three 8-bit
// passes, 53k ids). Its keys are split into at most 4 chunks.
constexpr int kMaxDigitBits = 12;
constexpr int64_t kMaxSortChunks = 4;

// An (id, position) pair of the comparison sort that small batches take.
struct IdPos {
  int64_t id, pos;
};

// Floats of a core that stay resident in a typical per-core L2 (256 KiB).
constexpr int64_t kL2Floats = 64 * 1024;

// Most nodes level L of a plan of nnz ids can have.
inline int64_t MaxNodes(const TTDims& dims, int level, int64_t nnz) {
  return std::min(nnz, dims.MaxPrefixes(level));
}

// The last core (r_k = 1) turns each distinct id's (Q x r) partial into its (Q x q) row: a
// long contraction over the rank and a short output. Read in the plan's order, siblings
// share their parent's partial, and when the core fits in L2 its slices can be read in any
// order; computed as dot products along the rank (both operands contiguous there) it runs
// 8-wide instead of q-wide. Needs r % 8 == 0; otherwise the digit-grouped path is used.
inline bool LastLevelBySiblings(const TTDims& dims) {
  const int t = dims.k - 1;
  return dims.r[t] % 8 == 0 && dims.p[t] * dims.CoreSliceSize(t) <= kL2Floats;
}

// Parts of about equal leaf counts for the last level's backward; a few suffice for the
// thread pools of CPU hosts, and each costs one zeroed copy of dG.
inline int64_t LastLevelParts(const LookupPlan& plan) {
  return std::max<int64_t>(1, std::min<int64_t>(4, plan.num_nodes(plan.k) / 1024));
}

// How the backward runs level `level` of the prefix tree.
struct LevelBackward {
  bool direct_to_parent;  // parents sum their children's shares straight from dP and G
  bool dot_form;          // dP @ G^T as dot products along q r_out (no transposed core)
};

inline LevelBackward HowToBackprop(const TTDims& dims, int level) {
  const int t = level - 1;
  // A core that fits in L2 is read in whatever order; a bigger one only digit by digit.
  // So a parent sums its children's dP_L[c] @ G_t[d_c]^T directly when the core is small,
  // and otherwise each child's share goes through `contrib`, written in digit order.
  // With q r_out a multiple of 8, dP @ G^T runs as dot products along it (MatMulBt), and
  // dG_t[d] comes out in the core's own layout; otherwise through transposed slices.
  return {dims.p[t] * dims.CoreSliceSize(t) <= kL2Floats, (dims.q[t] * dims.r[t + 1]) % 8 == 0};
}

// x / d for 0 <= x, 0 < d, through a double reciprocal and one correction step: a 64-bit
// idiv per node (~20 cycles, 100k of them per batch) was a visible share of the op's time.
class Divider {
 public:
  explicit Divider(int64_t d) : d_(d), inv_(1.0 / static_cast<double>(d)) {}
  int64_t Div(int64_t x) const {
    // Doubles hold x exactly below 2^52, so the estimate is off by at most one there.
    if (x >= (int64_t{1} << 52)) return x / d_;
    int64_t q = static_cast<int64_t>(static_cast<double>(x) * inv_);
    if (q * d_ > x) --q;
    else if ((q + 1) * d_ <= x) ++q;
    return q;
  }

 private:
  int64_t d_;
  double inv_;
};

}  // namespace internal
}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_INTERNAL_H_
