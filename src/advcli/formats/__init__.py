"""The files several stages share, one module per format, each reading and writing its own:

- `tensorfile`: named tensors with a JSON header, under checkpoints, sets and caches;
- `advset`: adversarial sets (`AdvSet`, `save_adv_set`, `load_adv_set`);
- `results`: eval results (`EvalResult`, `save_results`, `load_results`) and attack summaries.

A file that one stage alone writes lives beside that stage (`audit/file.py`, `train/history.py`);
checkpoints, which build their model, are `advcli.models.checkpoint`. Nothing here imports torch models.
"""
