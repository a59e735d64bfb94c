r"""Bytes a data-parallel DLRM step moves between workers, computed from variable sizes
(a calculation, not a measurement; docs/distribution.md).

Under MirroredStrategy / MultiWorkerMirroredStrategy every worker holds every variable and
each step combines the gradients:
- dense gradients (MLPs, TT cores, hot-row cache rows) are all-reduced; a ring all-reduce of
  S bytes sends and receives 2 (N - 1) / N * S bytes per worker;
- an nn.Embedding table's gradient is a tf.IndexedSlices with one row per lookup (B / N
  per worker per table), all-gathered: each worker receives the other N - 1 workers'
  (B / N) (4 D + 8) bytes per table (float32 rows, int64 indices).
Both also keep the replicated tables in every worker's memory.

    python -m examples.dlrm.communication --workers=2 --batch_size=1024 --tt_tables=7 \
        --tt_rank=32
"""

from typing import Sequence

from absl import app, flags

from examples.dlrm import data as dlrm_data
from examples.dlrm import reports

FLOAT_BYTES, INDEX_BYTES = 4, 8
BOTTOM_MLP, TOP_MLP = (512, 256, 64), (512, 256)


def mlp_params(dim: int, num_tables: int = dlrm_data.NUM_SPARSE) -> int:
    """Parameters of DLRM's bottom MLP 13-512-256-64-D and top MLP over
    [bottom output, pairwise dots of the T + 1 vectors] -512-256-1."""
    def dense_stack(inputs, units):
        total = 0
        for u in units:
            total += inputs * u + u
            inputs = u
        return total
    interactions = (num_tables + 1) * num_tables // 2
    return (dense_stack(dlrm_data.NUM_DENSE, BOTTOM_MLP + (dim,))
            + dense_stack(dim + interactions, TOP_MLP + (1,)))


def step_bytes(sizes: Sequence[int], dim: int, tt_tables: int, tt_rank: int, workers: int,
               batch_size: int, num_cores: int = 3, cache_size: int = 0) -> dict:
    """Per worker and step: bytes all-reduced (dense gradients), the ring's traffic,
    bytes all-gathered (the Embedding tables' sparse gradients), and the replicated
    embedding bytes, for DLRM with the `tt_tables` largest tables TT-compressed."""
    if workers < 1 or batch_size % workers:
        raise ValueError(f"batch_size = {batch_size} must be a multiple of workers = "
                         f"{workers} >= 1")
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    tt = set(order[:tt_tables])
    tt_params = sum(reports.tt_layer(sizes[i], dim, tt_rank, num_cores).num_params
                    for i in tt)
    cache_params = len(tt) * cache_size * dim
    dense_rows = sum(sizes[i] for i in range(len(sizes)) if i not in tt)
    reduced = FLOAT_BYTES * (mlp_params(dim, len(sizes)) + tt_params + cache_params)
    sparse_tables = len(sizes) - len(tt)
    gathered = ((workers - 1) * (batch_size // workers) * sparse_tables
                * (FLOAT_BYTES * dim + INDEX_BYTES))
    return {
        "workers": workers, "tt_tables": len(tt), "tt_rank": tt_rank,
        "all_reduced_bytes": reduced,
        "ring_traffic_bytes": 2 * (workers - 1) * reduced // workers,
        "all_gathered_bytes": gathered,
        "replicated_embedding_bytes": FLOAT_BYTES * (dense_rows * dim + tt_params
                                                     + cache_params),
    }


FLAGS = flags.FLAGS
flags.DEFINE_enum("sizes", "kaggle", list(dlrm_data.TABLE_SIZES), "DLRM's table sizes.")
flags.DEFINE_float("table_scale", 1.0, "Divide every table size by this.")
flags.DEFINE_integer("workers", 2, "Workers (replicas).", lower_bound=1)
flags.DEFINE_integer("batch_size", 1024, "Global batch.", lower_bound=1)
flags.DEFINE_list("tt_tables", ["0", "3", "7"], "Numbers of TT tables to compare.")
flags.DEFINE_integer("tt_rank", 32, "TT rank.", lower_bound=1)
flags.DEFINE_integer("cache_size", 0, "Hot-row cache rows per TT table.", lower_bound=0)


def main(argv):
    del argv
    sizes = dlrm_data.scale_table_sizes(dlrm_data.TABLE_SIZES[FLAGS.sizes], FLAGS.table_scale)
    dim = dlrm_data.DEFAULT_EMBEDDING_DIM[FLAGS.sizes]
    print(f"{FLAGS.sizes} tables / {FLAGS.table_scale:g}, D={dim}, {FLAGS.workers} workers, "
          f"global batch {FLAGS.batch_size} (per worker and step; computed from sizes)")
    print(f"{'TT tables':>9} {'rank':>4} {'all-reduced':>12} {'ring traffic':>13} "
          f"{'all-gathered':>13} {'replicated emb':>15}")
    for k in FLAGS.tt_tables:
        row = step_bytes(sizes, dim, int(k), FLAGS.tt_rank, FLAGS.workers, FLAGS.batch_size,
                         cache_size=FLAGS.cache_size)
        print(f"{row['tt_tables']:>9} {FLAGS.tt_rank:>4} "
              f"{reports.format_bytes(row['all_reduced_bytes']):>12} "
              f"{reports.format_bytes(row['ring_traffic_bytes']):>13} "
              f"{reports.format_bytes(row['all_gathered_bytes']):>13} "
              f"{reports.format_bytes(row['replicated_embedding_bytes']):>15}")


if __name__ == "__main__":
    app.run(main)
