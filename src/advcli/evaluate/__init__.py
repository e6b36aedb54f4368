"""`advcli eval`: clean, PGD, AutoAttack, transfer and worst-case accuracy into a result file.

Public face: `run.run_eval(checkpoint, EvalOptions, ...) -> EvalResult` (the stage) and
`run.plan_eval` (its --dry-run plan); `chunks` runs an attack chunk by chunk with a time
estimate, and `progress_file` is the resumable progress file beside -o. The result file itself
is `advcli.formats.results`.
"""
