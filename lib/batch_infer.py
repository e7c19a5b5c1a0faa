"""Batch inference over the datastore: MONAI Label's BatchInferTask with two gaps closed.

MONAI Label's task already picks the images (`all`, `labeled` = with a `final` label,
`unlabeled`), saves each result as a label with the request's `label_tag` (default
`original`) and logs `i => image => device => done / total` per case, which
`GET /batch/infer` shows in the task's `details`. What it does not do:

- go on after a failing case: with one worker (the default below 8 CPU cores) the first
  exception ends the whole batch. Here each case's error is caught, logged and reported
  as `{"error": ...}` under its image id, and the batch goes on;
- run without a GPU: with `multi_gpu` (its default) it spreads cases over the CUDA devices,
  and with none it divides by zero. Here `multi_gpu` is turned off when CUDA is absent.

Per-case transform logging defaults to WARNING (as the endpoint's own default parameters
say, but those are dropped as soon as a request sends any), so that the progress lines
stay in the last lines that `GET /batch/infer` shows.
"""

import logging
from collections.abc import Callable

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferTask

logger = logging.getLogger(__name__)


class CmfnetBatchInfer(BatchInferTask):
    def __call__(self, request, datastore: Datastore, infer: Callable):
        request = {"logging": "WARNING", **request}
        if not torch.cuda.is_available():
            request["multi_gpu"] = False
        results = super().__call__(request, datastore, skipping_failures(infer))
        failed = {image: result["error"] for image, result in results.items() if result and "error" in result}
        tag = request.get("label_tag", DefaultLabelTag.ORIGINAL)
        logger.info(
            f"Batch inference finished: {len(results) - len(failed)} of {len(results)} images labelled "
            f"(tag '{tag}'); {len(failed)} failed and skipped: {sorted(failed)}"
        )
        return results


def skipping_failures(infer: Callable) -> Callable:
    """`infer(request, datastore)` that reports a failing case as `{"error": detail}` instead of raising."""

    def infer_or_report(request, datastore):
        try:
            return infer(request, datastore)
        except Exception as e:  # any failure of one case: bad input, missing model, out of memory
            detail = getattr(e, "detail", None) or f"{type(e).__name__}: {e}"
            logger.error(f"Batch inference: image {request.get('image')} failed and is skipped: {detail}")
            return {"error": str(detail)}

    return infer_or_report
