/*
 * Framework-free launchers of the TT embedding-bag kernels (docs/ops.md is the contract).
 *
 * Plain C so that the TensorFlow OpKernel (g++), the ctypes bindings and anything else can
 * call them without CUDA or TensorFlow headers: pointers are device pointers, the stream is
 * a cudaStream_t passed as void* (NULL = the legacy default stream), and the caller owns all
 * memory. Each launcher only enqueues work on the stream and never synchronizes, except
 * tt_cuda_read_error(), whose job is to synchronize.
 *
 * Workspace: every launcher takes a caller-allocated device workspace whose size comes from
 * the matching *_workspace_size() query (same arguments, same device), so that frameworks
 * can hand out temporary memory from their own allocators. No launcher allocates.
 *
 * Errors come back two ways:
 *   - the return value (TT_CUDA_OK or a TT_CUDA_ERROR_*): a host-side check failed and
 *     nothing was enqueued, or the CUDA runtime refused a call (no device, launch failure);
 *     tt_cuda_last_error_message() then explains it (per host thread);
 *   - data errors that only the device can see (ids outside [0, num_rows), malformed
 *     row_splits) are written into a TTCudaErrorInfo in device memory. The kernels never read
 *     out of bounds whatever the data: a bad id is looked up as an all-zero row that receives
 *     no gradient, and malformed bags are clamped into [0, nnz). The caller must treat the
 *     results as invalid when the error info reports a problem.
 */
#ifndef TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_H_
#define TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TT_CUDA_MAX_CORES 4

/* Return codes. */
#define TT_CUDA_OK 0
#define TT_CUDA_ERROR_INVALID_ARGUMENT 1 /* bad shape, size, enum or missing pointer */
#define TT_CUDA_ERROR_WORKSPACE_TOO_SMALL 2
#define TT_CUDA_ERROR_CUDA 3 /* the CUDA runtime failed (no device, launch error, ...) */

/* Combiners, as in tf.nn.embedding_lookup_sparse. */
#define TT_CUDA_COMBINER_NONE 0
#define TT_CUDA_COMBINER_SUM 1
#define TT_CUDA_COMBINER_MEAN 2
#define TT_CUDA_COMBINER_SQRTN 3

/* Element type of the ids. */
#define TT_CUDA_INDEX_INT32 0
#define TT_CUDA_INDEX_INT64 1

/* The TT shape: k cores, core t of shape (p[t], ranks[t], q[t], ranks[t + 1]), row-major,
 * ranks[0] = ranks[k] = 1, D = prod(q), num_rows <= prod(p). Entries past k are ignored. */
typedef struct TTCudaShape {
  int32_t num_cores;
  int32_t q[TT_CUDA_MAX_CORES];
  int32_t ranks[TT_CUDA_MAX_CORES + 1];
  int64_t p[TT_CUDA_MAX_CORES];
  int64_t num_rows;
} TTCudaShape;

/* One TTEmbeddingBag call. All pointers are device pointers. For the *_workspace_size()
 * queries only the sizes, enums and the shape are read (pointers may be NULL). */
typedef struct TTCudaLookup {
  TTCudaShape shape;
  const float* cores[TT_CUDA_MAX_CORES];
  const void* indices;       /* [nnz], int32 or int64 as index_type says */
  int32_t index_type;        /* TT_CUDA_INDEX_* */
  int32_t combiner;          /* TT_CUDA_COMBINER_* */
  int64_t nnz;               /* at most 2^31 - 2 */
  const int64_t* row_splits; /* [num_bags + 1]; not read for combiner none */
  int64_t num_bags;          /* ignored for combiner none */
  const float* weights;      /* [nnz], or NULL for all ones; must be NULL for combiner none */
} TTCudaLookup;

/* Data errors found on the device. Positions are -1 when there is no error, so initialize
 * nothing: every launcher resets the struct on its stream before using it. */
typedef struct TTCudaErrorInfo {
  int64_t index_position; /* smallest i with indices[i] outside [0, num_rows), or -1 */
  int64_t index_value;    /* indices[index_position] */
  int64_t split_position; /* smallest b where row_splits breaks a rule, or -1: b == 0 and
                             row_splits[0] != 0, or row_splits[b] < row_splits[b - 1], or
                             b == num_bags and row_splits[b] != nnz */
  int64_t split_value;    /* row_splits[split_position] */
  int64_t split_previous; /* row_splits[split_position - 1], 0 when split_position == 0 */
  int64_t cache_position; /* cached lookups: smallest s where the cache ids break a rule, or
                             -1: ids[s] < 0, or ids[s] < ids[s - 1], or ids[s] == ids[s - 1]
                             < num_rows (a row held twice) */
  int64_t cache_value;    /* ids[cache_position] */
  int64_t cache_previous; /* ids[cache_position - 1], 0 when cache_position == 0 */
} TTCudaErrorInfo;

/* Forward: output is [num_bags, D] (pooled) or [nnz, D] (combiner none), fully written. */
int tt_cuda_forward_workspace_size(const TTCudaLookup* lookup, size_t* bytes);
int tt_cuda_forward(const TTCudaLookup* lookup, float* output, void* workspace,
                    size_t workspace_bytes, TTCudaErrorInfo* error, void* stream);

/* Backward: grad has the forward output's shape; core_grads is a host array of num_cores
 * device pointers, each shaped like its core. They are zeroed, then accumulated with
 * atomicAdd (so the order of the float additions, and the last bits, vary between runs). */
int tt_cuda_backward_workspace_size(const TTCudaLookup* lookup, size_t* bytes);
int tt_cuda_backward(const TTCudaLookup* lookup, const float* grad, float* const* core_grads,
                     void* workspace, size_t workspace_bytes, TTCudaErrorInfo* error, void* stream);

/* Deduplication alone: unique_ids[0 .. *num_unique) are the distinct ids in increasing
 * order, inverse[i] is the slot of indices[i]. Outputs hold nnz entries; num_unique is one
 * int32 in device memory. Ids outside [0, num_rows) are reported in error and all map to
 * one extra slot (the last) whose value is num_rows. */
int tt_cuda_unique_workspace_size(int64_t nnz, int64_t num_rows, int32_t index_type, size_t* bytes);
int tt_cuda_unique(const void* indices, int32_t index_type, int64_t nnz, int64_t num_rows,
                   int64_t* unique_ids, int32_t* inverse, int32_t* num_unique, void* workspace,
                   size_t workspace_bytes, TTCudaErrorInfo* error, void* stream);

/* A hot-row cache in front of the table (docs/cache.md), in device memory: ids [size]
 * sorted ascending, entries >= num_rows mark empty slots and ids below num_rows are distinct
 * (checked on the device: cache_position in the error info); rows [size, D] (not read by
 * the backward, which may pass NULL). */
typedef struct TTCudaCache {
  const int64_t* ids;
  const float* rows;
  int64_t size; /* at most 2^31 - 1 */
} TTCudaCache;

/* Cached forward: output as tt_cuda_forward, with each cached id's row read from the cache;
 * slots [nnz]: each position's cache slot or -1 (int32); num_hits: one int64 in device
 * memory, the number of positions whose id is cached. The TT rows of cached ids are computed
 * too (their groups' prefixes are shared with uncached ids, and skipping them would need the
 * hit count on the host) but never read. */
int tt_cuda_cached_forward_workspace_size(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                          size_t* bytes);
int tt_cuda_cached_forward(const TTCudaLookup* lookup, const TTCudaCache* cache, float* output,
                           int32_t* slots, int64_t* num_hits, void* workspace,
                           size_t workspace_bytes, TTCudaErrorInfo* error, void* stream);

/* Cached backward, in two calls on one workspace. The first zeroes core_grads and adds the
 * gradient of the uncached ids (atomicAdd, as tt_cuda_backward), and leaves in
 * *num_hit_slots (one int64 in device memory) how many distinct cache slots were hit. The
 * caller reads it (tt_cuda_read_count), allocates hit_slots [n] (int64) and hit_values
 * [n, D], and the second call copies there the cache rows' gradient: the slots hit,
 * ascending, and one summed gradient row each. The workspace must be left untouched in
 * between; the second call takes the same lookup and cache. */
int tt_cuda_cached_backward_workspace_size(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                           size_t* bytes);
int tt_cuda_cached_backward(const TTCudaLookup* lookup, const TTCudaCache* cache, const float* grad,
                            float* const* core_grads, int64_t* num_hit_slots, void* workspace,
                            size_t workspace_bytes, TTCudaErrorInfo* error, void* stream);
int tt_cuda_cached_backward_cache_grads(const TTCudaLookup* lookup, const TTCudaCache* cache,
                                        int64_t num_hit_slots, int64_t* hit_slots,
                                        float* hit_values, const void* workspace,
                                        size_t workspace_bytes, void* stream);

/* Copies one int64 from device memory to the host and waits for the stream. */
int tt_cuda_read_count(const int64_t* device_count, int64_t* host_count, void* stream);

/* Copies the device error info to the host and waits for the stream (the one sync). */
int tt_cuda_read_error(const TTCudaErrorInfo* device_error, TTCudaErrorInfo* host_error,
                       void* stream);

/* Caps the shared memory one block of the chain kernels may use (0 = the device's opt-in
 * maximum, the default). Smaller budgets force the slower paths (core slices read from
 * global memory, then partial products in global memory); the kernel tests use this to test
 * them. Process-wide; changes workspace sizes, so query again after setting it. */
void tt_cuda_set_shared_memory_budget(size_t bytes);

const char* tt_cuda_status_string(int status);
/* Message of the last failure on this host thread ("" if none). */
const char* tt_cuda_last_error_message(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_H_ */
