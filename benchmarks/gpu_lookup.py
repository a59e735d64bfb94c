"""GPU lookup speed: the fused CUDA kernels vs a batched-GEMM chain vs a dense lookup.

    make -C custom_ops/cuda              # builds custom_ops/cuda/libtt_cuda_harness.so (nvcc)
    python -m benchmarks.gpu_lookup      # needs a GPU and CuPy; PyTorch for the baselines

Workload (benchmarks/workload.py, as in benchmarks/lookup.py): the largest Criteo-Kaggle
table, 10,131,227 x 16, row factors (200, 220, 250), column factors (2, 2, 4), rank 32; one
batch of 2048 bags of 26 ids drawn Zipf(1.1) over the rows, summed per bag. Timed, each
forward and forward+backward (gradients of the cores, of the cache rows, or of the dense
table), in turns, medians of --reps calls each followed by a device synchronization:

- TT kernels: tt_cuda_forward / tt_cuda_backward through custom_ops/cuda/bindings.py;
- TT kernels + cache: the cached launchers, with the batch's most frequent ids in a cache of
  --cache_fraction of the rows (0.1%);
- bmm chain: the same TT math in PyTorch, torch.unique, gathered core slices, torch.bmm
  (cuBLAS batched GEMM), index_add_ pooling; its backward by autograd;
- dense: the uncompressed table, a gather and segment sum (torch EmbeddingBag, sparse
  gradient).

Ratios are of each baseline to the TT kernels. Before timing, a small table's plain and
cached lookups and gradients are checked against tt_keras.oracle, and the timed batch's
forward too. No TensorFlow, and argparse rather than absl flags: GPU machines here have
neither.
"""

import argparse
import os
import sys

import numpy as np

from tt_keras import oracle, tt_math

from benchmarks.workload import (
    BAG_SIZE,
    BAGS,
    COL_SHAPE,
    NUM_ROWS,
    ROW_SHAPE,
    ZIPF,
    interleaved_median_ms,
    zipf_ids,
)
from custom_ops.cuda import bindings

DEFAULT_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "custom_ops", "cuda", "libtt_cuda_harness.so")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default=DEFAULT_LIB, help="the launcher library (nvcc build)")
    ap.add_argument("--rank", type=int, default=32, help="TT rank of the table")
    ap.add_argument("--bags", type=int, default=BAGS, help="bags per batch")
    ap.add_argument("--bag_size", type=int, default=BAG_SIZE, help="ids per bag")
    ap.add_argument("--zipf", type=float, default=ZIPF, help="Zipf exponent of the ids")
    ap.add_argument("--id_order", choices=["rank", "shuffled"], default="rank",
                    help="rank: id k is the k-th most frequent row; shuffled: as hashed ids")
    ap.add_argument("--cache_fraction", type=float, default=0.001,
                    help="cache size as a fraction of the rows")
    ap.add_argument("--reps", type=int, default=50, help="timed calls of each lookup")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def open_kernels(path):
    """The GPU launchers, or an exit with the reason they cannot run here."""
    try:
        import cupy  # pylint: disable=import-outside-toplevel
    except ImportError:
        sys.exit("gpu_lookup: needs CuPy and a CUDA GPU (CuPy is not installed)")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        sys.exit(f"gpu_lookup: needs a CUDA GPU ({e})")
    if devices == 0:
        sys.exit("gpu_lookup: needs a CUDA GPU (none found)")
    if not os.path.exists(path):
        sys.exit(f"gpu_lookup: {path} is missing; build it with `make -C custom_ops/cuda`")
    return bindings.Kernels(path, emulated=False)


def max_error(pairs, errors=()):
    """Largest |got - want| over all pairs, relative to each want's largest entry; infinite
    when the kernels reported bad input (errors: their TTCudaErrorInfo)."""
    if not all(e.clean for e in errors):
        return float("inf")
    return max(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
               for got, want in pairs if np.size(want))


def check_small_table(kernels, rng):
    """Plain and cached lookups and gradients of a small table against the oracle."""
    shape = tt_math.TTShape((13, 11, 9), (2, 2, 4), (1, 16, 16, 1))
    num_rows, cores = 1200, oracle.random_cores(shape, rng)
    ids = zipf_ids(num_rows, 300, ZIPF, "shuffled", rng)
    splits = np.arange(0, 301, 10)
    weights = rng.uniform(0.5, 1.5, 300).astype(np.float32)
    bags, w = oracle.split_bags(ids, splits), oracle.split_bags(weights, splits)
    grad = rng.normal(size=(30, shape.dim)).astype(np.float32)
    lookup = kernels.lookup(cores, num_rows, ids, splits, weights, "mean")
    out, e1 = kernels.forward(lookup)
    core_grads, e2 = kernels.backward(lookup, grad)
    pairs = [(out, oracle.pooled_oracle(oracle.dense_table(cores, num_rows), bags, w, "mean"))]
    pairs += zip(core_grads, oracle.core_grads_oracle(cores, bags, w, "mean", grad))

    cache_ids = np.unique(ids)[::3]
    cache_rows = rng.normal(size=(len(cache_ids), shape.dim)).astype(np.float32)
    cache = kernels.cache(cache_ids, cache_rows)
    out, _, _, e3 = kernels.cached_forward(lookup, cache)
    core_grads, hit_slots, hit_values, e4 = kernels.cached_backward(lookup, cache, grad)
    table = oracle.cached_table(cores, num_rows, cache_ids, cache_rows)
    want_cores, want_slots = oracle.cached_grads_oracle(cores, num_rows, cache_ids, bags, w,
                                                        "mean", grad)
    pairs += [(out, oracle.pooled_oracle(table, bags, w, "mean")),
              (hit_values, want_slots[hit_slots])]
    pairs += zip(core_grads, want_cores)
    return max_error(pairs, [e1, e2, e3, e4])


def tt_lookups(kernels, cores, ids, splits, grad, cache_ids, rng):
    """The plain forward's output and error info, read back once, and {name: (fwd,
    fwd+bwd)} callables of the TT kernels, plain and cached."""
    sync = kernels.memory.sync
    lookup = kernels.lookup(cores, NUM_ROWS, ids, splits, None, "sum")
    forward, backward = bindings.Forward(kernels, lookup), bindings.Backward(kernels, lookup,
                                                                            grad)
    cache_rows = rng.normal(size=(len(cache_ids), grad.shape[1])).astype(np.float32)
    cache = kernels.cache(cache_ids, cache_rows)
    cached_forward = bindings.CachedForward(kernels, lookup, cache)
    cached_backward = bindings.CachedBackward(kernels, lookup, cache, grad)

    def run(*launches):
        def fn():
            for launch in launches:
                launch.launch()
            sync()
        return fn

    forward.launch()
    output, error = forward.result()
    return output, error, {"TT kernels": (run(forward), run(forward, backward)),
                    "TT kernels + cache": (run(cached_forward),
                                           run(cached_forward, cached_backward))}


def torch_lookups(cores, ids, splits, grad):
    """{name: (fwd, fwd+bwd)} of the PyTorch baselines, or {} without PyTorch."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        print("PyTorch not found: no bmm-chain or dense baseline")
        return {}
    dev = torch.device("cuda")
    t_cores = [torch.tensor(c, device=dev, requires_grad=True) for c in cores]
    t_ids = torch.tensor(ids, device=dev)
    bag_of = torch.repeat_interleave(torch.arange(len(splits) - 1, device=dev),
                                     torch.tensor(np.diff(splits), device=dev))
    t_grad = torch.tensor(grad, device=dev)
    strides = tt_math.row_strides(ROW_SHAPE)

    def chain():
        unique, inverse = torch.unique(t_ids, return_inverse=True)
        n = unique.numel()
        partial = None
        for core, p, stride in zip(t_cores, ROW_SHAPE, strides):
            _, r_in, q, r_out = core.shape
            slices = core[(unique // stride) % p]
            if partial is None:
                partial = slices.reshape(n, q, r_out)
            else:
                step = torch.bmm(partial, slices.reshape(n, r_in, q * r_out))
                partial = step.reshape(n, -1, r_out)
        rows = partial.reshape(n, -1)[inverse]
        return torch.zeros(len(splits) - 1, rows.shape[1], device=dev).index_add_(0, bag_of,
                                                                                  rows)

    dense = torch.nn.EmbeddingBag(NUM_ROWS, grad.shape[1], mode="sum", sparse=True).to(dev)
    offsets = torch.tensor(splits[:-1], device=dev)

    def timed(fn, backward):
        def run():
            params = t_cores + [dense.weight]
            for p in params:
                p.grad = None
            if backward:
                fn().backward(t_grad)
            else:
                with torch.no_grad():
                    fn()
            torch.cuda.synchronize()
        return run

    def dense_lookup():
        return dense(t_ids, offsets)

    return {"bmm chain (cuBLAS)": (timed(chain, False), timed(chain, True)),
            "dense gather + sum": (timed(dense_lookup, False), timed(dense_lookup, True))}


def main(argv=None):
    args = parse_args(argv)
    kernels = open_kernels(args.lib)
    rng = np.random.default_rng(args.seed)
    print(f"device: {kernels.memory.device_name()}")
    error = check_small_table(kernels, rng)
    print(f"small table against tt_keras.oracle (plain and cached, fwd and bwd): largest "
          f"relative error {error:.1e}")
    if error > 1e-4:
        sys.exit("gpu_lookup: the kernels do not match the oracle")

    shape = tt_math.TTShape(ROW_SHAPE, COL_SHAPE, (1, args.rank, args.rank, 1))
    cores = oracle.random_cores(shape, rng)
    nnz = args.bags * args.bag_size
    ids = zipf_ids(NUM_ROWS, nnz, args.zipf, args.id_order, rng).astype(np.int64)
    splits = np.arange(0, nnz + 1, args.bag_size, dtype=np.int64)
    grad = rng.normal(size=(args.bags, shape.dim)).astype(np.float32)
    unique, counts = np.unique(ids, return_counts=True)
    cache_size = max(1, int(round(args.cache_fraction * NUM_ROWS)))
    cache_ids = np.sort(unique[np.argsort(-counts, kind="stable")][:cache_size])
    print(f"table {NUM_ROWS:,} x {shape.dim}, rank {args.rank}: {shape.num_params:,} "
          f"parameters ({shape.compression_ratio(NUM_ROWS):.0f}x); {args.bags} bags x "
          f"{args.bag_size} Zipf({args.zipf}) ids ({args.id_order} order), "
          f"{len(unique):,} distinct; cache of {cache_size:,} rows takes "
          f"{np.isin(ids, cache_ids).mean():.0%} of the ids")

    output, launch_error, lookups = tt_lookups(kernels, cores, ids, splits, grad, cache_ids,
                                               rng)
    # The timed batch at scale: rows of its distinct ids only (the table is too large).
    inverse = np.searchsorted(unique, ids)
    want = oracle.pooled_oracle(oracle.sampled_rows(cores, unique),
                                oracle.split_bags(inverse, splits))
    error = max_error([(output, want)], [launch_error])
    print(f"timed batch's forward against tt_keras.oracle: largest relative error {error:.1e}")
    if error > 1e-4:
        sys.exit("gpu_lookup: the kernels do not match the oracle on the timed batch")
    lookups.update(torch_lookups(cores, ids, splits, grad))

    names = list(lookups)
    fns = [fn for name in names for fn in lookups[name]]
    ms = interleaved_median_ms(fns, args.reps)
    base_fwd, base_bwd = ms[0], ms[1]
    print(f"\n{'':22} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd / TT':>9} {'fwd+bwd / TT':>13}")
    for i, name in enumerate(names):
        fwd, fwd_bwd = ms[2 * i], ms[2 * i + 1]
        print(f"{name:22} {fwd:9.3f} {fwd_bwd:11.3f} {fwd / base_fwd:9.2f} "
              f"{fwd_bwd / base_bwd:13.2f}")
    print(f"(medians of {args.reps} calls each, timed in turns; ratios: time / TT kernels')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
