"""DLRM on Criteo with TT-compressed embedding tables (TT-Rec), on TFRS.

Modules:
  data   -- Criteo Kaggle train.txt reader and a synthetic Criteo-like source (tf.data).
  model  -- DLRM on tfrs.experimental.models.Ranking, TTEmbedding for the largest tables.
  export -- SavedModel export with a flat, per-raw-feature serving signature.
  train  -- absl entry point: train dense vs TT, evaluate, report, plot, export.

TFRS 0.7.7 needs legacy Keras: run with TF_USE_LEGACY_KERAS=1.
"""
