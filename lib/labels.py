"""The label conventions every part shares (docs/architecture.md, "Labels and strokes").

Classes are a name -> id map with ids 1..K (0 = background). Stored scribbles use
0 = not annotated, 1..K = a stroke of that class, K+1 = a background stroke
(MONAI Label's `scribbles_bg_label` convention). Networks train on class indices
0..K with IGNORE (-1) for unannotated voxels.
"""

import json
from dataclasses import dataclass

import numpy as np

from lib.errors import InvalidInput

IGNORE = -1
# The datastore tag of stored strokes (`final` is MONAI Label's own tag of dense labels)
SCRIBBLES_TAG = "scribbles"
# The demo phantoms' classes (lib.data.phantoms), the server's default label map
DEMO_LABELS = {"liver": 1, "spleen": 2, "bone": 3, "tumour": 4}


@dataclass(frozen=True)
class LabelSet:
    """The model's classes: `classes` maps name -> id, ids exactly 1..K."""

    classes: dict[str, int]

    def __post_init__(self):
        if not self.classes:
            raise ValueError("at least one class is needed")
        ids = sorted(self.classes.values())
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"class ids must be exactly 1..K, got {ids} for {self.classes}")

    @classmethod
    def parse(cls, value: "str | dict[str, int]") -> "LabelSet":
        """From a `--conf labels` value: JSON text like '{"liver":1,"spleen":2}', or a dict."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"labels must be JSON like '{{\"liver\":1}}', got {value!r}: {e}") from e
        if not isinstance(value, dict):
            raise ValueError(f"labels must be a JSON object of name -> id, got {value!r}")
        return cls({str(k): int(v) for k, v in value.items()})

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """The class names in id order (id 1 first)."""
        return sorted(self.classes, key=self.classes.get)

    @property
    def background_scribble(self) -> int:
        """The stored value of a background stroke: K+1."""
        return self.num_classes + 1

    def check_values(self, array: np.ndarray, what: str, allow_background_strokes: bool) -> None:
        """Raise InvalidInput when `array` holds values outside the convention."""
        top = self.background_scribble if allow_background_strokes else self.num_classes
        values = np.unique(array)
        bad = values[(values < 0) | (values > top) | (values != np.round(values))]
        if bad.size:
            raise InvalidInput(
                f"{what} holds values {bad[:10].tolist()} outside 0..{top} "
                f"(classes {self.classes}; {self.background_scribble} = background stroke)"
            )
