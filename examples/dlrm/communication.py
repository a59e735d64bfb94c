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

Under ParameterServerStrategy (the dense baseline, --distribution=parameter_server) every
variable lives on the parameter servers, the large tables sharded over them, and a worker's
step reads what it needs and sends its gradients back (`ps_step_bytes`):
- each table's lookups send the ids to the PS that holds the rows and bring the rows back,
  and the gradient goes back as rows with their indices: 2 (B / N) (4 D + 8) bytes per
  table for a worker's B / N examples (duplicate ids not merged, as embedding_lookup does);
- the MLP variables are read whole and their gradients sent whole: 2 * 4 * P_mlp.
`compare` puts it beside TT replicated (`step_bytes`: ring all-reduce of the cores and MLP,
all-gather of the remaining dense tables' rows) and finds the global batch where they cross.
Left out on both sides: the optimizer's step counter and the metrics' variables (the AUC's
4 x 2000 counters), a few KB.

    python -m examples.dlrm.communication --workers=2 --batch_size=1024 --tt_tables=7 \
        --tt_rank=32
"""

from typing import Optional, Sequence

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


def ps_step_bytes(sizes: Sequence[int], dim: int, workers: int, batch_size: int) -> dict:
    """Per worker and step, under ParameterServerStrategy, when each worker's step is its
    share B / N of the global batch B: bytes of embedding rows pulled and their gradients
    pushed (every table lives on the parameter servers, sharded or whole), and of the MLP
    variables pulled and their gradients pushed; and the embedding bytes each of M
    parameter servers holds is the total / M."""
    if workers < 1 or batch_size % workers:
        raise ValueError(f"batch_size = {batch_size} must be a multiple of workers = "
                         f"{workers} >= 1")
    rows = 2 * (batch_size // workers) * len(sizes) * (FLOAT_BYTES * dim + INDEX_BYTES)
    mlp = 2 * FLOAT_BYTES * mlp_params(dim, len(sizes))
    return {"workers": workers, "embedding_row_bytes": rows, "mlp_bytes": mlp,
            "total_bytes": rows + mlp, "embedding_bytes": FLOAT_BYTES * dim * sum(sizes)}


def tt_total_bytes(row: dict) -> int:
    """What a worker sends and receives per step under TT replicated (step_bytes' row):
    the ring's traffic plus the all-gathered rows."""
    return row["ring_traffic_bytes"] + row["all_gathered_bytes"]


def crossover_batch(sizes: Sequence[int], dim: int, tt_tables: int, tt_rank: int,
                    workers: int, num_cores: int = 3, cache_size: int = 0) -> Optional[float]:
    """The global batch B at which PS-sharded dense and TT replicated move the same bytes
    per worker and step (both are a + b B), None when one moves fewer at every B."""
    def line(fn):  # (bytes at B = 0, bytes per example), from two exact batch sizes
        one, two = fn(workers), fn(2 * workers)
        return 2 * one - two, (two - one) / workers
    ps = line(lambda b: ps_step_bytes(sizes, dim, workers, b)["total_bytes"])
    tt = line(lambda b: tt_total_bytes(step_bytes(sizes, dim, tt_tables, tt_rank, workers, b,
                                                  num_cores, cache_size)))
    if ps[1] == tt[1]:
        return None
    crossing = (tt[0] - ps[0]) / (ps[1] - tt[1])
    return crossing if crossing > 0 else None


def compare(sizes: Sequence[int], dim: int, tt_tables: int, tt_rank: int,
            workers: Sequence[int], batches: Sequence[int], cache_size: int = 0) -> list:
    """Rows (workers, global batch, PS bytes, TT bytes, which moves fewer) and, per worker
    count, the crossover batch."""
    rows = []
    for n in workers:
        for b in batches:
            ps = ps_step_bytes(sizes, dim, n, b)["total_bytes"]
            tt = tt_total_bytes(step_bytes(sizes, dim, tt_tables, tt_rank, n, b,
                                           cache_size=cache_size))
            rows.append({"workers": n, "batch_size": b, "ps_bytes": ps, "tt_bytes": tt,
                         "fewer": "PS" if ps < tt else "TT" if tt < ps else "equal",
                         "crossover_batch": crossover_batch(sizes, dim, tt_tables, tt_rank,
                                                            n, cache_size=cache_size)})
    return rows


FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags, defined only when this module runs as a program: tests
    import it beside other modules (benchmarks.quality) that define flags of the same
    names."""
    flags.DEFINE_enum("sizes", "kaggle", list(dlrm_data.TABLE_SIZES), "DLRM's table sizes.")
    flags.DEFINE_float("table_scale", 1.0, "Divide every table size by this.")
    flags.DEFINE_integer("workers", 2, "Workers (replicas).", lower_bound=1)
    flags.DEFINE_integer("batch_size", 1024, "Global batch.", lower_bound=1)
    flags.DEFINE_list("tt_tables", ["0", "3", "7"], "Numbers of TT tables to compare.")
    flags.DEFINE_integer("tt_rank", 32, "TT rank.", lower_bound=1)
    flags.DEFINE_integer("cache_size", 0, "Hot-row cache rows per TT table.", lower_bound=0)
    flags.DEFINE_list("ps_workers", ["2", "8", "32", "128"],
                      "Worker counts of the PS-sharded vs TT-replicated comparison.")
    flags.DEFINE_list("ps_batches", ["1024", "8192", "65536"],
                      "Global batches of the PS-sharded vs TT-replicated comparison.")


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

    k = max(int(t) for t in FLAGS.tt_tables)
    print(f"\nPS-sharded dense (every table on the parameter servers; each worker's step is B / "
          f"N examples) vs TT replicated ({k} TT tables, rank {FLAGS.tt_rank}): bytes per "
          "worker and step, computed from sizes")
    print(f"{'workers':>7} {'batch':>7} {'PS sharded':>11} {'TT replicated':>14} "
          f"{'fewer':>5} {'crossover batch':>16}")
    for row in compare(sizes, dim, k, FLAGS.tt_rank, [int(n) for n in FLAGS.ps_workers],
                       [int(b) for b in FLAGS.ps_batches], FLAGS.cache_size):
        cross = row["crossover_batch"]
        print(f"{row['workers']:>7} {row['batch_size']:>7} "
              f"{reports.format_bytes(row['ps_bytes']):>11} "
              f"{reports.format_bytes(row['tt_bytes']):>14} {row['fewer']:>5} "
              f"{'none' if cross is None else f'{cross:,.0f}':>16}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
