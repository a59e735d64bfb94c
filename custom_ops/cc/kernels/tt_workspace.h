// Scratch memory of the TT core, handed in by the caller (framework-free).
//
// The core never allocates: each entry point that needs scratch has a *WorkspaceBytes()
// query, and the caller passes that much memory as a Workspace, the way the CUDA launchers
// of custom_ops/cuda/tt_kernels.h take theirs. The OpKernels get it from the op's allocator
// (OpKernelContext::allocate_temp), so it is freed after each call and shows in TF's memory
// stats; standalone callers (C++ tests, the profiling driver) use a WorkspaceBuffer.
//
// A sequence of calls on one Workspace needs at most the sum of their queries: a call keeps
// only what it documents as its output (a plan's arrays) and gives its scratch back on
// return.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_WORKSPACE_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_WORKSPACE_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace tt_keras {

// Every array starts on a 64-byte boundary: with malloc's 16-byte alignment half of the
// 32-byte loads of a row straddle two cache lines (measured: 20% slower GEMMs).
constexpr size_t kWorkspaceAlign = 64;

// Bytes that Workspace::Take<T>(count) uses.
template <typename T>
constexpr size_t ArrayBytes(int64_t count) {
  const size_t bytes = static_cast<size_t>(count > 0 ? count : 0) * sizeof(T);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// A bump allocator over caller-provided memory. Not thread-safe: arrays are taken on the
// calling thread before a parallel loop, never inside one.
class Workspace {
 public:
  Workspace() = default;
  // `data` need not be aligned; up to kWorkspaceAlign - 1 bytes go to aligning it, which is
  // why callers allocate query + kWorkspaceAlign bytes.
  Workspace(void* data, size_t bytes) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(data);
    const uintptr_t aligned = (at + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    if (data == nullptr || aligned - at > bytes) return;
    base_ = reinterpret_cast<char*>(aligned);
    capacity_ = bytes - (aligned - at);
  }

  // count elements of T, uninitialized. Running out is a bug in a size query, not a user
  // error: it stops the process rather than write past the caller's memory.
  template <typename T>
  T* Take(int64_t count) {
    const size_t bytes = ArrayBytes<T>(count);
    if (bytes > capacity_ - used_) {
      std::fprintf(stderr,
                   "tt_keras: workspace of %zu bytes exhausted (%zu used, %zu more asked); "
                   "a *WorkspaceBytes() query is too small\n",
                   capacity_, used_, bytes);
      std::abort();
    }
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += bytes;
    if (used_ > peak_) peak_ = used_;
    return p;
  }

  size_t used() const { return used_; }
  // The most ever in use at once: what the size queries are tested against.
  size_t peak() const { return peak_; }
  size_t capacity() const { return capacity_; }

 private:
  friend class ScratchScope;
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t peak_ = 0;
};

// Gives back, on scope exit, everything taken from the workspace since construction.
class ScratchScope {
 public:
  explicit ScratchScope(Workspace* ws) : ws_(ws), mark_(ws->used_) {}
  ~ScratchScope() { ws_->used_ = mark_; }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

 private:
  Workspace* ws_;
  size_t mark_;
};

// Owned workspace memory for standalone callers (tests, the driver).
class WorkspaceBuffer {
 public:
  explicit WorkspaceBuffer(size_t bytes)
      : data_(bytes > 0 ? std::malloc(bytes + kWorkspaceAlign) : nullptr),
        ws_(data_, data_ != nullptr ? bytes + kWorkspaceAlign : 0) {
    if (bytes > 0 && data_ == nullptr) {
      std::fprintf(stderr, "tt_keras: cannot allocate a workspace of %zu bytes\n", bytes);
      std::abort();
    }
  }
  ~WorkspaceBuffer() { std::free(data_); }
  WorkspaceBuffer(const WorkspaceBuffer&) = delete;
  WorkspaceBuffer& operator=(const WorkspaceBuffer&) = delete;
  Workspace* get() { return &ws_; }

 private:
  void* data_;
  Workspace ws_;
};

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_WORKSPACE_H_
