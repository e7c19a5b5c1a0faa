"""Every setting of the server and of a training run: type, default, bounds and meaning, in one place.

`ServerSettings` come from `--conf key value` at start. `TrainSettings` are the parameters of one
training run: their defaults can be changed with `--conf` too, and a `POST /train/cmfnet` body
overrides them for that run. Both are parsed and checked once, here; a bad value is an
`InvalidInput` (422) that names the key and the allowed range.

`python -m lib.settings --readme` writes the table of both into README.md (between the
`settings` markers), so the table is generated from these classes and cannot drift.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lib.errors import InvalidInput
from lib.labels import DEMO_LABELS
from lib.markdown import write_between_markers

# MONAI Label's own keys of a train request (its task adds some, its train task's config others, its
# client, which 3D Slicer uses, `client_id`); they pass through unchecked. Any other key must be a
# TrainSettings field.
MONAI_LABEL_TRAIN_KEYS = frozenset(
    {"model", "name", "device", "run_id", "local_rank", "enqueue", "force_sync", "bundle_path", "gpus", "client_id"}
    | {"dataset", "dataloader", "tracking", "tracking_uri", "tracking_experiment_name", "tracking_run_name"}
)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, values: Mapping[str, Any], what: str):
        """Validated settings from a mapping; errors become one InvalidInput naming every bad key."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            problems = []
            for item in error.errors():
                key = ".".join(str(part) for part in item["loc"]) or "(body)"
                problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
            raise InvalidInput(f"invalid {what}: " + "; ".join(problems)) from None


class LossWeights(_Settings):
    """Weights of the hybrid loss terms (lib.losses.hybrid); 0 switches a term off.

    The regularizers are off by default: on the real abdominal CT they did not raise the Dice reached
    within the same budget and made each step dearer (the `cmfnet` and `regularized` methods of
    benchmarks.accuracy). Self-training is off too: mixing the fused and per-modality outputs into the
    pseudo labels as DMSPS mixes its branches, on the real scan it was level with the default over six
    seeds (README, "CmFNet against early fusion, run by run"); an earlier version that mixed in the fused
    output alone lowered the phantoms' Dice (the `self_training` method).

    The per-modality outputs count a quarter each beside the fused one (`branches`), as nnU-Net weighs its
    quarter-resolution output in deep supervision: on the phantoms 0.957 against 0.950 with the weight 1;
    on the real scan level with early fusion over six seeds, each one run of both (README, "CmFNet against
    early fusion, run by run").

    Leaving out the pseudo labels the propagation is less sure of (`pseudo_min_confidence`) is off by
    default. Measured with the walker alone as propagation (before lib.scribbles.appearance, which now
    decides the walker's unsure voxels): from 0.6 it raised the phantoms' tumour (0.78-0.83 against 0.77;
    the walker labelled a third of each tumour as liver, almost all of it with confidence below 0.7) but
    neither their mean Dice nor the real scan's beyond the spread of one run to the next.
    """

    pce: float = Field(1.0, ge=0, le=100, description="partial cross-entropy on the strokes")
    pseudo: float = Field(1.0, ge=0, le=100, description="confidence-weighted CE + Dice on the pseudo labels")
    dense: float = Field(1.0, ge=0, le=100, description="CE + Dice where a `final` (dense) label exists")
    branches: float = Field(
        0.25, ge=0, le=100, description="weight of each per-modality output in the pCE, pseudo-label and dense terms"
    )
    affinity: float = Field(0.0, ge=0, le=100, description="intra-modal local-affinity (gated CRF) term")
    consistency: float = Field(0.0, ge=0, le=100, description="per-modality vs fused prediction agreement")
    alignment: float = Field(0.0, ge=0, le=100, description="alignment of the modality bottleneck features")
    self_training: float = Field(
        0.0, ge=0, le=1, description="share of the network's own prediction in the pseudo labels, once ramped up"
    )
    pseudo_min_confidence: float = Field(
        0.0, ge=0, lt=1, description="pseudo labels the propagation is less sure of than this are left out"
    )
    rampup_steps: int = Field(
        100, ge=0, le=1_000_000, description="steps over which the regularizers and self-training ramp up"
    )


class TrainSettings(_Settings):
    """One training run. A run stops at `max_steps` or `max_minutes`, whichever comes first."""

    max_steps: int = Field(5000, ge=1, le=10_000_000, description="optimiser steps of a run, at most")
    max_minutes: float = Field(
        8.0, gt=0, le=10_080, description="wall-clock minutes of a run, at most, data preparation included"
    )
    val_every: int = Field(50, ge=1, le=100_000, description="steps between validations on held-out strokes")
    learning_rate: float = Field(3e-3, gt=0, le=1, description="peak learning rate (AdamW, polynomial decay)")
    batch_size: int = Field(2, ge=1, le=64, description="patches per optimiser step (all from one case)")
    modality_dropout: float = Field(
        0.2, ge=0, le=1, description="probability of hiding a companion modality from a sample"
    )
    propagation: Literal["walker_refined", "random_walker", "none"] = Field(
        "walker_refined",
        description="how strokes are expanded into pseudo labels before learning: the random walker, its unsure "
        "voxels decided by each class's appearance (lib.scribbles.appearance), its boundaries moved onto the images' "
        "edges by a CRF (lib.scribbles.crf); the walker alone; or none",
    )
    network: Literal["cmfnet", "unet"] = Field(
        "cmfnet", description="`cmfnet`, or `unet`: one MONAI UNet with the modalities as channels (early fusion)"
    )
    pretrained: bool = Field(True, description="start from the published model when its shape fits")
    multi_gpu: bool = Field(
        False,
        description="train with one process per visible GPU (DDP) when two or more are visible; "
        "else on one device, with a warning in the log",
    )
    loss: LossWeights = Field(default_factory=LossWeights, description='loss weights, e.g. `{"affinity": 0}`')

    @classmethod
    def from_request(cls, request: Mapping[str, Any], defaults: TrainSettings | None = None) -> TrainSettings:
        """`defaults` (the server's) updated with a train request's own keys; MONAI Label's keys pass through."""
        base = (defaults or cls()).model_dump()
        own = {k: v for k, v in request.items() if k not in MONAI_LABEL_TRAIN_KEYS}
        if isinstance(own.get("loss"), Mapping):
            own["loss"] = {**base["loss"], **own["loss"]}
        return cls.parse({**base, **own}, "train parameters")


class ServerSettings(_Settings):
    """The server's `--conf` keys (`TrainSettings` keys are accepted too, as the default of every run)."""

    models: str = Field("cmfnet", description="models to serve (one per file in `lib/configs/`)")
    labels: str = Field(
        json.dumps(DEMO_LABELS, separators=(",", ":")), description="class name -> id (1..K), JSON without spaces"
    )
    modalities: str = Field("ct,mr", description="reference first, then companions (their folder names)")
    preset: Literal["auto", "small", "large"] = Field(
        "auto", description="network width: `small` (CPU), `large` (GPU), `auto` by the training device"
    )
    auto_train: bool = Field(True, description="start training by itself when annotations are stored")
    auto_train_delay: float = Field(
        5.0, ge=0, le=3600, description="seconds to wait after a save before training (saves meanwhile are batched)"
    )
    auto_train_minutes: float = Field(5.0, gt=0, le=10_080, description="`max_minutes` of an automatic run")
    seg_poll_interval: float = Field(
        10.0, ge=0, le=86_400, description="seconds between looks for new scribble SEG series in the PACS (0: off)"
    )
    infer_workers: int = Field(1, ge=1, le=64, description="inference and scribbles requests run at once")
    infer_queue: int = Field(
        16, ge=0, le=10_000, description="requests that may wait for a worker; past that the answer is 503"
    )

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: str) -> str:
        names = [m.strip().lower() for m in value.split(",") if m.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError("give one or more distinct modality names, reference first, e.g. ct,mr")
        return ",".join(names)

    @property
    def modality_list(self) -> list[str]:
        return self.modalities.split(",")


def parse_conf(conf: Mapping[str, str]) -> tuple[ServerSettings, TrainSettings]:
    """Server settings and the default train settings from MONAI Label's `--conf` dict (all strings)."""
    server_keys = set(ServerSettings.model_fields)
    train_keys = set(TrainSettings.model_fields)
    unknown = sorted(set(conf) - server_keys - train_keys - {"use_pretrained_model", "skip_scoring"})
    if unknown:
        raise InvalidInput(f"unknown --conf key(s) {unknown}; known: {sorted(server_keys | train_keys)}")
    server = ServerSettings.parse({k: v for k, v in conf.items() if k in server_keys}, "--conf")
    train = {k: v for k, v in conf.items() if k in train_keys}
    if "loss" in train:
        train["loss"] = _json(train["loss"], "--conf loss")
    return server, TrainSettings.from_request(train)


def _json(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{what} must be JSON: {error}") from None


def markdown_table() -> str:
    """The README's settings table, generated from the classes above."""
    rows = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    sections = [("", ServerSettings), ("", TrainSettings), ("loss.", LossWeights)]
    for prefix, cls in sections:
        for name, field in cls.model_fields.items():
            if name == "loss":
                continue
            default = field.get_default(call_default_factory=True)
            rows.append(
                f"| `{prefix}{name}` | {_type_name(field.annotation)} | `{_show(default)}` | {_bounds(field)} | "
                f"{field.description} |"
            )
    return "\n".join(rows)


def _type_name(annotation) -> str:
    args = getattr(annotation, "__args__", None)
    if args and getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bounds(field) -> str:
    limits = []
    for item in field.metadata:
        for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attribute, None) is not None:
                limits.append(f"{sign} {getattr(item, attribute)}")
    return ", ".join(limits) or "-"


def write_readme_table(readme: Path) -> bool:
    """Replace the table between the README's `settings` markers; False when the markers are missing."""
    return write_between_markers(readme, "settings", markdown_table())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print the settings table, or write it into README.md.")
    parser.add_argument("--readme", type=Path, nargs="?", const=Path("README.md"), help="README to update")
    args = parser.parse_args(argv)
    if args.readme is None:
        print(markdown_table())
    elif not write_readme_table(args.readme):
        parser.exit(1, f"{args.readme} has no <!-- settings:start --> / <!-- settings:end --> markers\n")


if __name__ == "__main__":
    main()
