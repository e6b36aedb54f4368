"""Not flagged: torchvision's random transforms draw from torch's global RNG, seeded per worker."""

from _common import SIZE, images
from torch.utils.data import Dataset
from torchvision import transforms


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()
        self.transform = transforms.Compose(
            [transforms.RandomCrop(SIZE, padding=4), transforms.RandomHorizontalFlip()]
        )

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), 0


def make() -> Dataset:
    return Augmented()
