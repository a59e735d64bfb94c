"""DLRM on Criteo with TT-compressed embedding tables (TT-Rec), on TFRS.

Modules:
  config    -- the trainer's options: dataclass sections, one absl flag per option field.
  data      -- Criteo Kaggle train.txt reader and a synthetic Criteo-like source (tf.data).
  sample    -- the real Criteo sample's path ($TT_KERAS_CRITEO_SAMPLE or its default).
  sources   -- the trainer's data sources (synthetic or files): train stream, held-out set.
  model     -- DLRM on tfrs.experimental.models.Ranking, TTEmbedding for the largest tables.
  training  -- train, evaluate and export one model; the models of a run in turn.
  callbacks -- Keras callbacks: step timing and curves, stop at a step, checkpoints,
               TensorBoard.
  memory    -- peak resident memory of a phase.
  reports   -- results, comparison and size report as data, and their formatters.
  plots     -- the training curves PNG.
  export    -- SavedModel export with a flat, per-raw-feature serving signature.
  train     -- absl entry point: flags -> Config -> size report, or train and compare.
  distribution  -- --distribution: the tf.distribute strategy, each worker's data and
               writes.
  launch    -- starts N local MultiWorkerMirroredStrategy workers on loopback.
  communication -- bytes a data-parallel step all-reduces and all-gathers (calculated).

TFRS 0.7.7 needs legacy Keras: run with TF_USE_LEGACY_KERAS=1.
"""
