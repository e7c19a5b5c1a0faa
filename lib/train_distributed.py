"""Train the server's recipe outside the server with torchrun, on one node or several.

    torchrun --nproc_per_node=4 -m lib.train_distributed --studies demo_data/studies --model-dir apps/cmfnet/model
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=node0:29400 --rdzv_id=cmfnet \\
        -m lib.train_distributed --studies /shared/studies --model-dir /shared/model --conf max_minutes 60

Every process builds the `cmfnet` train task as the server does (lib.configs.cmfnet, from the same
`--conf` keys) and runs its `train()`, where torchrun's environment initialises the process group
(nccl on GPUs, gloo on CPUs). Rank 0 reads the datastore (a folder or a DICOMweb URL) and makes the
plan; every process trains with DDP on its share of the cases (lib.distributed); rank 0 publishes
each better model atomically to `<model-dir>/cmfnet.pt`, where a server with that model folder
picks it up at its next inference. Without torchrun it trains in one process.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from datetime import datetime
from pathlib import Path

import torch
from monailabel.config import settings
from monailabel.interfaces.datastore import Datastore

from lib.configs.cmfnet import CmFNetConfig
from lib.datastore import CmfnetDatastore
from lib.dicomweb.datastore import dicomweb_datastore

logger = logging.getLogger(__name__)

MODEL = "cmfnet"


def open_datastore(studies: str, config: CmFNetConfig) -> Datastore:
    """The server's datastore for `--studies`: a DICOMweb server's URL or a local folder."""
    companions = config.modalities[1:]
    if studies.startswith(("http://", "https://")):
        return dicomweb_datastore(studies.rstrip("/"), config.label_set, companions)
    return CmfnetDatastore(
        studies, labels=config.label_set, companions=companions, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", required=True, help="datastore: a folder or a DICOMweb URL, as the server's")
    parser.add_argument(
        "--model-dir", type=Path, default=Path("apps/cmfnet/model"), help="the server's model folder (shared)"
    )
    parser.add_argument(
        "--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="as the server's --conf"
    )
    args = parser.parse_args(argv)

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    logging.basicConfig(
        level=logging.INFO,
        format=f"[%(asctime)s] [rank {rank}] [%(levelname)s] (%(name)s) - %(message)s",
        force=True,
    )
    config = CmFNetConfig()
    config.init(MODEL, str(args.model_dir), dict(args.conf), None)
    task = config.trainer()
    cuda = torch.cuda.is_available()
    request = {
        **copy.deepcopy(task.config()),
        **task.run_request({}),
        "run_id": datetime.now().strftime("%Y%m%d_%H%M%S"),
        "device": f"cuda:{local_rank}" if cuda else "cpu",
        "multi_gpu": world_size > 1,  # BasicTrainTask's switch for DDP, on CPUs too here
        "distributed_backend": "nccl" if cuda else "gloo",
        "cuda_device": local_rank,
    }
    logger.info(f"Process {rank} of {world_size} on {request['device']}, model folder {args.model_dir}")
    datalist = task.pre_process(request, open_datastore(args.studies, config)) if rank == 0 else []
    return task.train(rank, world_size, request, datalist)


if __name__ == "__main__":
    main()
