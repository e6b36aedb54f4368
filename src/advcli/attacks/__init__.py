"""Attacks in pixel space, one per file: FGSM, FGSM-RS, PGD (Linf/L2), stAdv; AutoAttack wrapper.

```python
from advcli.attacks import AttackSpec, build_attack
attack = build_attack(AttackSpec(name="pgd", norm="linf", eps="8/255", steps=10))
x_adv = attack.perturb(model, x, y, generator=torch.Generator().manual_seed(0))  # training
# Measuring robustness: check every iterate, keep the first that fools the model.
attack = build_attack(AttackSpec(name="pgd", norm="linf", eps="8/255", keep="first-success"))
robust = ~attack.run(model, x, y, generator=torch.Generator().manual_seed(0)).fooled & clean_ok
```
Norms, names and `keep` may be given as strings or enums, here and to the attack classes.
The contract every attack keeps is in `advcli.attacks.base`. `run` is the `advcli attack` stage
(`attack_checkpoint`, writing an adversarial set and a summary) and `plot` its picture.
"""

from advcli.attacks.base import EVAL_ATTACKS, ROBUST_RULES, Attack, AttackName, AttackRun, AttackSpec, Keep
from advcli.attacks.registry import attack_record, build_attack

__all__ = ["EVAL_ATTACKS", "ROBUST_RULES", "Attack", "AttackName", "AttackRun", "AttackSpec", "Keep", "attack_record",
           "build_attack"]
