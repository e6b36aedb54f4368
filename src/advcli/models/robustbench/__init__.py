"""RobustBench in advcli: its model zoo by name, its leaderboard entries, and export to them.

The robustbench package is an optional extra (`pip install 'advcli[robustbench]'`); only the
zoo needs it, and it is imported on first use (`_package.import_robustbench`, which also makes
robustbench 1.1.1 importable with PyPI's pyautoattack).

- `zoo`: `robustbench:NAME` wherever a checkpoint or `--model` goes (`is_zoo_spec`, `resolve`,
  `load_zoo_model`; `models.user.load_target` calls it), and the zoo architecture behind an
  imported checkpoint's arch `robustbench:DATASET/THREAT/NAME` (`build_architecture`).
- `imports`: `advcli import robustbench:NAME` (`import_zoo`).
- `leaderboard`: `model_info` JSON entries as typed rows (`read_entry`, `find_entry`,
  `LeaderboardEntry.as_result` / `published_row`: a published row for compare); the cifar10
  Linf/L2, cifar100 Linf and imagenet Linf entries ship in `model_info/`.
- `export`: an eval result as a leaderboard entry (`export_entry`; `advcli export robustbench`).
"""
