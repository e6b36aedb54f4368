"""`advcli train` and `adv-train`: one training loop, its saved state and what it writes.

Public face: `loop.fit(TrainOptions, data, device) -> TrainResult` and `loop.run_train` (the
stage); `adversarial.run_adv_train`/`adv_fit` (the loop with an attack on every batch); `state`
(resumable training state), `weight_average` (EMA of the weights), `history` (the history
file), `metrics_log` (per-epoch metrics, TensorBoard), `plot` (the history picture) and
`overlay` (`advcli plot history`: several runs on one picture).
"""
