"""nnU-Net v2 with its `ignore` label, as a peer beside CmFNet. Benchmark only.

ScribbleBench finds nnU-Net trained with a partial loss (its `ignore` label) the strongest plain
sparse-label trainer. This module trains it on the same strokes, with the same wall-clock budget,
on the same machine as our own method, and predicts the same case:

    train_and_predict(channels, strokes, affine, num_classes, minutes, work_dir) -> (labels, facts)

What it does, and every choice that is ours rather than nnU-Net's:

- **Data.** One training case, written as an nnU-Net raw dataset under `work_dir`: the channels
  on the CT grid (CT first as "CT" = nnU-Net's CT normalization; MR as "MR" = z-score; NaN, where
  the resampled MR has no data, becomes 0), read back with nnU-Net's `NibabelIO`. Labels: our
  stored strokes (0 = not annotated, 1..K = class k, K+1 = background stroke) become nnU-Net's
  0 = background, 1..K = classes, K+1 = `ignore` (nnU-Net requires the ignore label to be the
  highest one; the loss and the patch sampling then see annotated voxels only).
- **Planning and preprocessing**: nnU-Net's own (fingerprint, `ExperimentPlanner`, the
  `3d_fullres` configuration, `DefaultPreprocessor`), called through its Python API. The planner
  sizes the patch for a GPU memory target: nnU-Net's default (8 GB) on a GPU, 1 GB on the CPU
  (:func:`planner_memory_gb`), unless `gpu_memory_gb` is given.
- **Training**: `BudgetTrainer`, a subclass of nnU-Net's `nnUNetTrainer` defined here (not copied
  into the nnunetv2 package; instantiated directly), on the CPU by default. nnU-Net's recipe is kept
  (network from the plans, deep supervision, Dice + CE with the ignore label, SGD with Nesterov
  momentum 0.99 from lr 1e-2, its data augmentation and foreground oversampling, batch size from
  the plans) except for three changes that a wall-clock budget forces:
  1. it stops when `minutes` have passed since `train_and_predict` started (preprocessing
     included): an iteration starts only if, at the mean time of the last five, it would end
     within the budget (the first, whose time is not known yet, starts if any budget is left), so
     the last one may end past the budget by that estimate's error, or by a whole iteration for
     the first (`facts["train_over_budget_s"]` says by how much);
  2. nnU-Net's poly learning-rate schedule, lr = 1e-2 (1 - epoch / 1000)^0.9, runs over the time
     left for training instead of over 1000 epochs: lr = 1e-2 (1 - t / T)^0.9 per iteration, so
     it decays to 0 at the budget as nnU-Net's does at its last epoch;
  3. an "epoch" is `iterations_per_epoch` (default 10, nnU-Net's is 250) iterations, only a unit
     for logging, and the per-epoch validation is skipped: the only case is the training case, and
     nnU-Net's validation would only score the strokes it trains on to pick `checkpoint_best`; we
     predict with the final weights, nnU-Net's default for inference (`checkpoint_final`).
  4. on a CPU with native bfloat16 (lib.precision) training and prediction run under bf16 autocast, as
     our own methods do there; nnU-Net autocasts on CUDA only (on other CPUs bf16 is emulated, no faster).
  The CPU plan and bf16 because nnU-Net is built for a GPU: on a 2-core AMD EPYC its default plan
  (patch 128x112x112, batch 2, float32) took 42 s an iteration, 10 iterations in 8 minutes (mean Dice
  0.002); the 1 GB plan (patch 64^3, batch 2: the patch of our own CPU plan) in bf16 3.3 s, 138
  iterations (0.224; `seconds_per_iteration` and `iterations` in the facts below).
- **Prediction**: nnU-Net's `nnUNetPredictor` (sliding window, step 0.5, Gaussian weighting) with
  the trained weights on the same case, read the same way; test-time mirroring is nnU-Net's
  default (on, all three axes) unless `mirroring=False`. The label map comes back on the CT grid
  (0 = background, 1..K = our class ids).

nnunetv2 and its dependencies are not part of the server's install: they go into a separate venv
from `benchmarks/requirements-nnunet.txt` (see benchmarks/README.md). This module imports without
them; `available()` says why it cannot run. Nothing is downloaded at run time.

Run it through the accuracy benchmark, which writes the case and scores the prediction like every
other method's (`make nnunet-peer MINUTES=8` on the real abdominal CT):

    python -m benchmarks.accuracy --data real --methods nnunet --minutes 8 --merge
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_CmFNetPeer"
CASE = "case_000"
CONFIGURATION = "3d_fullres"
FOLD = "all"  # one case: nnU-Net's "all" fold trains on every case
FILE_ENDING = ".nii.gz"
ITERATIONS_PER_EPOCH = 10
AUGMENTATION_WORKERS = "nnUNet_n_proc_DA"  # nnU-Net's data augmentation processes
REQUIREMENTS = Path(__file__).with_name("requirements-nnunet.txt")
ENVIRONMENT = (
    "nnUNet_raw",
    "nnUNet_preprocessed",
    "nnUNet_results",
    AUGMENTATION_WORKERS,
    "nnUNet_def_n_proc",
    "nnUNet_compile",
    "nnUNet_wandb_enabled",
    "HF_HUB_OFFLINE",
)


def available() -> str | None:
    """None when nnU-Net v2 can run here, else the reason (a sentence) for the benchmark to skip."""
    try:
        importlib.import_module("nnunetv2")
        importlib.import_module("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    except ImportError as error:  # ModuleNotFoundError included
        return (
            f"nnU-Net v2 is not installed here ({error}); it is benchmark-only: install "
            f"{REQUIREMENTS.relative_to(REQUIREMENTS.parents[1])} into its own venv (benchmarks/README.md)"
        )
    return None


CPU_MEMORY_TARGET_GB = 1.0  # the planner's target on the CPU: see the module doc


def planner_memory_gb(device: str, requested: float | None) -> float | None:
    """The GPU memory target for nnU-Net's planner: `requested`, else 1 GB on the CPU, else nnU-Net's own (None)."""
    if requested is not None:
        return requested
    return CPU_MEMORY_TARGET_GB if _on_cpu(device) else None


def cpu_autocast_dtype(device: str):
    """bf16 on a CPU with native bf16 (lib.precision decides), else None; nnU-Net's own CUDA autocast is left as is."""
    from lib.precision import autocast_dtype

    return autocast_dtype(device) if _on_cpu(device) else None


def _on_cpu(device: str) -> bool:
    return device.split(":")[0] == "cpu"


def nnunet_version() -> str | None:
    try:
        return importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Labels: our stored strokes <-> nnU-Net's labels with the ignore label


def ignore_label(num_classes: int) -> int:
    """nnU-Net's ignore label for K classes: K + 1, the highest label (nnU-Net requires that)."""
    return num_classes + 1


def strokes_to_nnunet(strokes: np.ndarray, num_classes: int) -> np.ndarray:
    """Our strokes (0 = none, 1..K = class, K+1 = background) -> nnU-Net's (0 = background, K+1 = ignore)."""
    strokes = np.asarray(strokes)
    background = num_classes + 1
    if strokes.size and (strokes.min() < 0 or strokes.max() > background):
        raise ValueError(f"strokes hold values outside 0..{background} (K = {num_classes})")
    labels = strokes.astype(np.uint8, copy=True)
    labels[strokes == 0] = ignore_label(num_classes)
    labels[strokes == background] = 0
    return labels


def nnunet_to_strokes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The inverse of `strokes_to_nnunet`: nnU-Net labels with the ignore label -> our stored strokes."""
    labels = np.asarray(labels)
    ignore = ignore_label(num_classes)
    if labels.size and (labels.min() < 0 or labels.max() > ignore):
        raise ValueError(f"nnU-Net labels hold values outside 0..{ignore} (K = {num_classes})")
    strokes = labels.astype(np.uint8, copy=True)
    strokes[labels == 0] = num_classes + 1
    strokes[labels == ignore] = 0
    return strokes


def prediction_to_labels(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """nnU-Net's predicted segmentation -> our label map: the same ids, 0 = background, 1..K (never ignore)."""
    prediction = np.asarray(prediction)
    if prediction.size and (prediction.min() < 0 or prediction.max() > num_classes):
        raise ValueError(f"prediction holds values outside 0..{num_classes}")
    return prediction.astype(np.uint8)


def dataset_json(num_classes: int, channel_names: list[str], class_names: list[str] | None = None) -> dict:
    """nnU-Net's dataset.json for one case with the ignore label; read with NibabelIO (our axes, our affine)."""
    names = class_names or [f"class_{k}" for k in range(1, num_classes + 1)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    labels = {"background": 0, **{name: k for k, name in enumerate(names, start=1)}}
    labels["ignore"] = ignore_label(num_classes)
    return {
        "channel_names": {str(i): name for i, name in enumerate(channel_names)},
        "labels": labels,
        "numTraining": 1,
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "NibabelIO",
        "name": DATASET_NAME,
        "description": "CmFNet Label benchmark: one case, scribbles as labels, the rest ignored",
    }


def default_channel_names(count: int) -> list[str]:
    """Channel 0 is the CT ("CT": nnU-Net's CT normalization), the others MR ("MR": z-score)."""
    return ["CT"] + ["MR"] * (count - 1)


def write_raw_dataset(
    raw_root: Path,
    channels: list[np.ndarray],
    labels: np.ndarray,
    affine: np.ndarray,
    description: dict,
) -> tuple[list[Path], Path]:
    """imagesTr/case_000_000i.nii.gz (NaN -> 0), labelsTr/case_000.nii.gz and dataset.json; returns the paths."""
    import nibabel as nib

    folder = raw_root / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    images = []
    for index, channel in enumerate(channels):
        if channel.shape != labels.shape:
            raise ValueError(f"channel {index} has shape {channel.shape}, the strokes {labels.shape}")
        data = np.nan_to_num(np.asarray(channel, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        path = folder / "imagesTr" / f"{CASE}_{index:04d}{FILE_ENDING}"
        nib.save(nib.Nifti1Image(data, affine), path)
        images.append(path)
    label_path = folder / "labelsTr" / f"{CASE}{FILE_ENDING}"
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), label_path)
    (folder / "dataset.json").write_text(json.dumps(description, indent=2))
    return images, label_path


@contextlib.contextmanager
def nnunet_environment(work_dir: Path, threads: int, augmentation_workers: int):
    """nnU-Net's folders under work_dir and its process counts, for the duration; the old values are restored."""
    old = {name: os.environ.get(name) for name in ENVIRONMENT}
    values = {
        "nnUNet_raw": work_dir / "nnUNet_raw",
        "nnUNet_preprocessed": work_dir / "nnUNet_preprocessed",
        "nnUNet_results": work_dir / "nnUNet_results",
        AUGMENTATION_WORKERS: threads,  # for planning; train_and_predict sets augmentation_workers for training
        "nnUNet_def_n_proc": threads,
        "nnUNet_compile": "false",  # nnU-Net never compiles on a CPU; on a GPU, compiling would eat the budget
        "nnUNet_wandb_enabled": "0",  # no online logging
        "HF_HUB_OFFLINE": "1",  # dynamic-network-architectures brings timm / huggingface_hub: never fetch
    }
    try:
        for name, value in values.items():
            os.environ[name] = str(value)
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def machine_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def budget_trainer_class():
    """nnU-Net's trainer stopped by a wall-clock deadline (built lazily: nnunetv2 is optional)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from lib.precision import autocast

    class BudgetTrainer(nnUNetTrainer):
        """nnUNetTrainer with a deadline: time-based poly lr, no per-epoch validation (see the module doc).

        The constructor keeps nnUNetTrainer's signature (nnU-Net records its arguments by name);
        set `deadline` (time.monotonic() seconds) before `run_training`.
        """

        def __init__(self, plans, configuration, fold, dataset_json, device=None):
            device = device if device is not None else torch.device("cpu")
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.deadline: float | None = None
            self.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
            self.iterations_done = 0
            self.epochs_done = 0
            self.train_started = self.train_ended = None
            self.last_loss = None
            self.iteration_seconds: list[float] = []
            self.autocast_dtype = cpu_autocast_dtype(self.device.type)

        def train_step(self, batch: dict) -> dict:
            with autocast(self.device, self.autocast_dtype):
                return super().train_step(batch)

        def expected_iteration_s(self) -> float:
            """The mean of the last 5 iterations' times (0 before the first)."""
            recent = self.iteration_seconds[-5:]
            return float(np.mean(recent)) if recent else 0.0

        def learning_rate(self, now: float) -> float:
            """nnU-Net's poly schedule over the time left for training: initial_lr (1 - t / T)^0.9."""
            span = max(self.deadline - self.train_started, 1e-6)
            progress = min(max((now - self.train_started) / span, 0.0), 1.0)
            return self.initial_lr * (1.0 - progress) ** 0.9

        def run_training(self):
            if self.deadline is None:
                raise RuntimeError("BudgetTrainer.deadline is not set")
            self.on_train_start()
            self.train_started = time.monotonic()
            while time.monotonic() + self.expected_iteration_s() <= self.deadline:
                self.on_epoch_start()
                self.network.train()
                self.print_to_log_file(f"Epoch {self.current_epoch}")
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    now = time.monotonic()
                    if now + self.expected_iteration_s() > self.deadline:
                        break
                    lr = self.learning_rate(now)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.iteration_seconds.append(time.monotonic() - now)
                    self.iterations_done += 1
                if not outputs:
                    break
                self.logger.log("lrs", lr, self.current_epoch)
                self.on_train_epoch_end(outputs)
                self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
                self.last_loss = float(np.mean([o["loss"] for o in outputs]))
                self.print_to_log_file(
                    f"train_loss {self.last_loss:.4f}, lr {lr:.5f}, {self.iterations_done} iterations"
                )
                self.epochs_done += 1
                self.current_epoch += 1
            self.train_ended = time.monotonic()
            self.on_train_end()

    return BudgetTrainer


def _plans_facts(plans_manager, configuration_manager) -> dict:
    transpose = list(plans_manager.transpose_forward)
    patch = [int(p) for p in configuration_manager.patch_size]
    spacing = [float(s) for s in configuration_manager.spacing]
    # plan axis i = NibabelIO's reversed axis transpose[i] = our (array) axis 2 - transpose[i]
    ours = [0] * 3
    ours_spacing = [0.0] * 3
    for i, t in enumerate(transpose):
        ours[2 - t] = patch[i]
        ours_spacing[2 - t] = spacing[i]
    return {
        "plans_patch_size": patch,
        "plans_spacing": spacing,
        "plans_transpose_forward": transpose,
        "patch_size_our_axes": ours,
        "spacing_our_axes": ours_spacing,
        "batch_size": int(configuration_manager.batch_size),
        "network": configuration_manager.network_arch_class_name.rsplit(".", 1)[-1],
        "stages": len(configuration_manager.pool_op_kernel_sizes),
    }


def train_and_predict(
    channels: list[np.ndarray],
    strokes: np.ndarray,
    affine: np.ndarray,
    num_classes: int,
    minutes: float,
    work_dir: Path,
    *,
    class_names: list[str] | None = None,
    channel_names: list[str] | None = None,
    device: str = "cpu",
    mirroring: bool = True,
    gpu_memory_gb: float | None = None,
    threads: int | None = None,
    augmentation_workers: int = 0,
) -> tuple[np.ndarray, dict]:
    """Train nnU-Net v2 (ignore label) on `strokes` for `minutes` of wall clock, predict the case; see the module doc.

    channels: modalities on the CT grid (CT first), float32, NaN where a modality has no data.
    strokes: uint8 on the CT grid, our stored convention (0 = none, 1..K = class, K+1 = background stroke).
    affine: the CT's 4x4 voxel-to-world affine (nnU-Net takes the spacing from it).
    minutes: the budget, counted from this call's start; preprocessing and training are in it, prediction is not.
    work_dir: nnU-Net's raw, preprocessed and results folders go here (replaced if present).
    augmentation_workers: nnU-Net's data augmentation processes (nnUNet_n_proc_DA); 0 = in the training
        process, which on a 2-core CPU leaves both cores to the training step.
    Returns the predicted label map on the CT grid (uint8, 0 = background, 1..K) and a dict of facts.

    nnU-Net's fingerprinting and preprocessing run in "spawn" process pools, which import the
    caller's main module again: a script that calls this needs the `if __name__ == "__main__":` guard.
    """
    start = time.monotonic()
    deadline = start + 60.0 * minutes
    reason = available()
    if reason:
        raise RuntimeError(reason)
    strokes = np.asarray(strokes)
    affine = np.asarray(affine, dtype=np.float64)
    channel_names = channel_names or default_channel_names(len(channels))
    if len(channel_names) != len(channels):
        raise ValueError(f"{len(channel_names)} channel names for {len(channels)} channels")
    threads = threads or machine_threads()
    work_dir = Path(work_dir).resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(work_dir / name, ignore_errors=True)

    with nnunet_environment(work_dir, threads, augmentation_workers):
        import torch
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )
        from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from lib.precision import autocast

        torch.set_num_threads(threads)
        description = dataset_json(num_classes, channel_names, class_names)
        images, _ = write_raw_dataset(
            work_dir / "nnUNet_raw", channels, strokes_to_nnunet(strokes, num_classes), affine, description
        )

        # nnU-Net's planning and preprocessing (what nnUNetv2_plan_and_preprocess -c 3d_fullres runs)
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, verbose=False)
        gpu_memory_gb = planner_memory_gb(device, gpu_memory_gb)
        plans_identifier = plan_experiments([DATASET_ID], gpu_memory_target_in_gb=gpu_memory_gb)
        preprocess([DATASET_ID], plans_identifier, configurations=(CONFIGURATION,), num_processes=(1,))
        preprocessed = time.monotonic()

        # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA, which must then be > 0: the
        # augmentation workers are set only now, for training
        os.environ[AUGMENTATION_WORKERS] = str(augmentation_workers)
        plans = json.loads((work_dir / "nnUNet_preprocessed" / DATASET_NAME / f"{plans_identifier}.json").read_text())
        plans["continue_training"] = False  # nnUNetTrainer pops this (run_training.py sets it)
        trainer = budget_trainer_class()(plans, CONFIGURATION, FOLD, description, device=torch.device(device))
        trainer.disable_checkpointing = True  # the weights are used in memory below
        trainer.deadline = deadline
        trainer.run_training()
        trained = time.monotonic()

        # nnU-Net's predictor with the final weights, on the case read as in training
        trainer.set_deep_supervision_enabled(False)
        trainer.network.eval()
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=False,
            device=torch.device(device),
            verbose=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            trainer.network,
            trainer.plans_manager,
            trainer.configuration_manager,
            [{k: v.detach().clone() for k, v in trainer.network.state_dict().items()}],
            description,
            type(trainer).__name__,
            trainer.inference_allowed_mirroring_axes,
        )
        data, properties = NibabelIO().read_images([str(p) for p in images])
        with autocast(device, trainer.autocast_dtype):
            segmentation = predictor.predict_single_npy_array(data, properties)
        # NibabelIO reads (x, y, z) as (z, y, x); back to our axes
        labels = prediction_to_labels(np.asarray(segmentation).transpose(2, 1, 0), num_classes)
        if labels.shape != strokes.shape:
            raise RuntimeError(f"nnU-Net returned shape {labels.shape}, expected {strokes.shape}")
        predicted = time.monotonic()

        facts = {
            "method": "nnU-Net v2 3d_fullres, ignore label (partial Dice + CE), BudgetTrainer",
            "nnunetv2": nnunet_version(),
            "torch": torch.__version__,
            "device": device,
            "threads": threads,
            "augmentation_workers": augmentation_workers,
            "budget_minutes": minutes,
            "epochs": trainer.epochs_done,
            "iterations": trainer.iterations_done,
            "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "final_train_loss": trainer.last_loss,
            "seconds_preprocess": round(preprocessed - start, 2),
            "seconds_train": round(trained - preprocessed, 2),
            "seconds_train_steps": round((trainer.train_ended or trained) - (trainer.train_started or trained), 2),
            "seconds_predict": round(predicted - trained, 2),
            "seconds_per_iteration": round(float(np.mean(trainer.iteration_seconds)), 2)
            if trainer.iteration_seconds
            else None,
            "train_over_budget_s": round(max(0.0, (trainer.train_ended or trained) - deadline), 2),
            "mirroring": mirroring,
            "autocast": str(trainer.autocast_dtype or "nnU-Net's own: none on a CPU, on CUDA its default"),
            "weights": "final",
            "gpu_memory_target_gb": gpu_memory_gb if gpu_memory_gb is not None else "nnU-Net default (8)",
            "plans": plans_identifier,
            "configuration": CONFIGURATION,
            **_plans_facts(PlansManager(plans), PlansManager(plans).get_configuration(CONFIGURATION)),
        }
    return labels, facts


# ---------------------------------------------------------------------------------------------
# The command: one case written by benchmarks.methods.nnunet


@contextlib.contextmanager
def stdout_to_stderr():
    """nnU-Net's prints (its spawned workers' too) go to stderr, so that stdout holds only the JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Train nnU-Net v2 (ignore label) on one stroked case within a wall-clock budget and predict it "
        "(benchmarks.methods.nnunet writes the case and reads the prediction)."
    )
    parser.add_argument("--case", type=Path, required=True, help=".npz: channels (M,X,Y,Z), strokes, affine")
    parser.add_argument("--num-classes", type=int, required=True, help="K, foreground classes")
    parser.add_argument("--out", type=Path, required=True, help="the predicted labels (.npy, on the case's grid)")
    parser.add_argument("--minutes", type=float, default=2.0, help="budget: planning + preprocessing + training")
    parser.add_argument("--work-dir", type=Path, default=Path("results/cache/nnunet_peer"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-mirroring", action="store_true", help="predict without nnU-Net's test-time mirroring")
    parser.add_argument(
        "--gpu-memory-gb", type=float, help="nnU-Net planner's GPU memory target (default: 1 on the CPU, 8 on a GPU)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    parser.add_argument("--augmentation-workers", type=int, default=0, help="nnUNet_n_proc_DA (default 0)")
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(json.dumps({"skipped": reason}))
        return 3
    case = np.load(args.case)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    with stdout_to_stderr():
        prediction, facts = train_and_predict(
            list(case["channels"]),
            case["strokes"],
            case["affine"],
            args.num_classes,
            args.minutes,
            args.work_dir,
            device=args.device,
            mirroring=not args.no_mirroring,
            gpu_memory_gb=args.gpu_memory_gb,
            threads=args.threads,
            augmentation_workers=args.augmentation_workers,
        )
    np.save(args.out, prediction)
    print(json.dumps({"facts": facts, "cpus": machine_threads(), "load_after": os.getloadavg()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
