"""Error paths: a dataset whose __getitem__ fails inside the workers, a callable that returns
something that is not a Dataset, an IterableDataset, and a plain object that is not callable."""

from torch.utils.data import Dataset, IterableDataset


class Corrupt(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise ValueError(f"image {i} is corrupt")


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(4))


def make() -> Dataset:
    return Corrupt()


def not_a_dataset() -> int:
    return 42


def iterable() -> IterableDataset:
    return Stream()


NOT_CALLABLE = 3
