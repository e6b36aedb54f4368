"""advcli: adversarial-robustness experiments in PyTorch, one terminal command per stage."""

__version__ = "0.1.0"
