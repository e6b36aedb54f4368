"""`advcli compare`: tables of clean and robust accuracy over seeds, the trained-with ×
attacked-with matrix, the 1−SSIM and flatness tables, and published claims checked against them.

Public face: `run_compare(CompareOptions) -> CompareReport`, `load_input` and `compare` (files
to tables), the table model (`CompareTable`, `Column`, `ColumnKey`, `Cell`, `Row`, `Metric`,
`TableKind`), `entry_key`, `load_claims`/`check_claims`, and `render` for the text forms.
"""

from advcli.compare.claims import Claim, ClaimResult, check_claims, load_claims
from advcli.compare.columns import entry_key, summary_key
from advcli.compare.flatness import FlatnessSet, direction_pairs
from advcli.compare.model import Cell, Column, ColumnKey, CompareTable, Metric, Row, TableKind
from advcli.compare.run import CompareOptions, CompareReport, Input, compare, load_input, run_compare

__all__ = [
    "Cell", "Claim", "ClaimResult", "Column", "ColumnKey", "CompareOptions", "CompareReport",
    "CompareTable", "FlatnessSet", "Input", "Metric", "Row", "TableKind", "check_claims", "compare",
    "direction_pairs", "entry_key", "load_claims", "load_input", "run_compare", "summary_key",
]
