"""A short tour of TTEmbedding on the largest Criteo-Kaggle table.

    python -m examples.layer_demo

Prints the TT shape the layer picks for the 10,131,227 x 16 table at rank 32, its parameter
count and compression ratio, which lookup path it uses, and checks a pooled lookup against
the dense table rebuilt from the same cores for a few ids.
"""

import numpy as np
import tensorflow as tf

import tt_keras


def main():
    layer = tt_keras.TTEmbedding(10_131_227, 16, tt_rank=32, combiner="sum")
    layer.build()
    shape = layer.tt_shape
    print(f"table: 10,131,227 x 16 = {10_131_227 * 16:,} floats "
          f"({10_131_227 * 16 * 4 / 2**20:.1f} MiB dense)")
    print(f"TT shape: rows {shape.row_shape}, cols {shape.col_shape}, ranks {shape.ranks}")
    print(f"parameters: {layer.num_params:,} ({layer.embedding_bytes / 2**20:.2f} MiB); "
          f"compression ratio {layer.compression_ratio:.1f}x")
    print(f"lookup path: {tt_keras.resolve_backend(layer.lookup_backend)}")

    rng = np.random.default_rng(0)
    bags = tf.ragged.constant([rng.integers(0, 10_131_227, size=n).tolist() for n in (3, 1, 5)],
                              dtype=tf.int64)
    pooled = layer(bags).numpy()
    # The oracle: rows of the dense table, computed in NumPy from the same cores.
    rows = tt_keras.tt_math.tt_rows([c.numpy() for c in layer.cores], bags.flat_values.numpy())
    splits = bags.row_splits.numpy()
    expect = np.stack([rows[a:b].sum(axis=0) for a, b in zip(splits[:-1], splits[1:])])
    print(f"3 bags pooled: max |layer - NumPy oracle| = {np.abs(pooled - expect).max():.2e}")


if __name__ == "__main__":
    main()
