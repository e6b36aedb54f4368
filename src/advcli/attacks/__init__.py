"""Attacks in pixel space, one per file: FGSM, FGSM-RS, PGD (Linf/L2), stAdv; AutoAttack wrapper.

```python
from advcli.attacks import AttackSpec, build_attack
attack = build_attack(AttackSpec(name="pgd", norm=Norm.linf, eps=parse_eps("8/255"), steps=10))
x_adv = attack.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
```
The contract every attack keeps is in `advcli.attacks.base`.
"""

from advcli.attacks.base import Attack, AttackName, AttackSpec
from advcli.attacks.registry import attack_record, build_attack

__all__ = ["Attack", "AttackName", "AttackSpec", "attack_record", "build_attack"]
