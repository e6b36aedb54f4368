"""How a stage reads its dataset's images: `--stream`, `--image-size`, `--skip-bad` as a
`DataView`, the one value every stage that loads data (training included) passes to
`load_dataset`.

`--image-size` resizes streamed images only, so giving it asks for streaming: with `--stream
auto` the dataset streams; with `--stream off`, or for a dataset that cannot stream (synthetic,
the torchvision ones), it is a usage error rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advcli.config import parse_choice
from advcli.data.datasets import StreamMode
from advcli.errors import UsageError

# Sources that can stream (decode on the fly, resized to --image-size).
STREAMABLE = ("folder:", "shards:")


def can_stream(spec: str | None) -> bool:
    return spec is not None and str(spec).strip().lower().startswith(STREAMABLE)


@dataclass(frozen=True)
class DataView:
    """`--stream`, `--image-size`, `--skip-bad` as given (None: not given, so a training run's
    own view, or the defaults: auto, 224 px for streamed data)."""

    stream: str | None = None
    image_size: int | None = None
    skip_bad: bool = False

    def load_kwargs(self, spec: str) -> dict[str, Any]:
        """load_dataset's stream=, image_size=, skip_bad= for the dataset `spec` (checked)."""
        stream = parse_choice(StreamMode, self.stream or StreamMode.auto, name="--stream")
        size = self.image_size
        if size is not None:
            size = int(size)
            if size < 1:
                raise UsageError(f"--image-size must be a positive number of pixels, got {size}")
            if not can_stream(spec):
                raise UsageError(f"--image-size resizes streamed images (folder:PATH, shards:PATH), and "
                                 f"{spec} is read at its own size; drop --image-size")
            if stream is StreamMode.off:
                raise UsageError("--image-size resizes streamed images, and --stream off reads them at "
                                 "their own size; drop one of the two")
            stream = StreamMode.on  # a size was asked for: only the streamed path resizes
        return {"stream": stream.value, "image_size": size, "skip_bad": bool(self.skip_bad)}

    def given(self, **recorded: Any) -> DataView:
        """This view with the options not given taken from `recorded` (a training run's). A size
        given alone asks for streaming (a recorded `--stream off` does not refuse it); `--stream off`
        given alone reads the images at their own size (a recorded size does not refuse it)."""
        if self.image_size is not None:
            return self
        stream = self.stream or recorded.get("stream")
        off = stream is not None and parse_choice(StreamMode, stream, name="--stream") is StreamMode.off
        return DataView(stream=stream, image_size=None if off else recorded.get("image_size"),
                        skip_bad=self.skip_bad)
