"""`advcli audit`: can a robustness evaluation be trusted? Seven checks on the first n test
examples, each judged pass / warn / fail against the thresholds in `limits.LIMITS`:

1. `curve`: accuracy under warm-started PGD over an eps sweep far past the threat model must
   fall to the constant-image floor without losing examples it had fooled (`curve.py`).
2. `convergence`: the default attack (PGD-10) against the AND of PGD-100x5, APGD-CE and
   APGD-DLR (`convergence.py`).
3. `single-step`: FGSM must not beat PGD (`single_step.py`).
4. `black-box`: Square on points the white-box attacks left robust (`black_box.py`).
5. `transfer`: a surrogate's / the unwrapped model's (BPDA) adversarial examples, and EoT for
   randomised models, must not beat the white-box attacks (`transfer.py`).
6. `gradients`: zero or non-finite input gradients, saturated softmax, probabilities, random
   or dynamic outputs (`gradients.py`, with pyautoattack's own checks).
7. `precision`: the attack in the training AMP dtype vs fp32 (`precision.py`).

```python
from advcli.audit import AuditOptions, run_audit
result = run_audit("robust.safetensors", AuditOptions(n=500), device=torch.device("cpu"))
result.verdict, result.statuses  # "pass", {"curve": "pass", ...}
```
The result is an `advcli.audit.file.AuditResult`; `advcli.audit.file.save_audit` writes it.
"""

from advcli.audit.context import AuditOptions
from advcli.audit.limits import (
           ALL_CHECKS,
           LIMITS,
           QUICK_CHECKS,
           CheckName,
           Status,
           parse_checks,
           thresholds_table,
)
from advcli.audit.run import run_audit

__all__ = ["ALL_CHECKS", "LIMITS", "QUICK_CHECKS", "AuditOptions", "CheckName", "Status", "parse_checks",
           "run_audit", "thresholds_table"]
