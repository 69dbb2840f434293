"""
A few Multi-ConDoS training steps on fixed data, for tests/test_distributed.py: run under
``torchrun --nproc_per_node=2`` (each rank takes its half of every global batch) or as a plain single process (the
whole global batch); writes the final generator and discriminator weights to ``sys.argv[1]`` (``.rank<N>`` appended
on ranks > 0). ``LOCAL=1`` adds the location-level contrastive term (every location drawn, gathered across ranks).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from monai.losses import ContrastiveLoss, PatchAdversarialLoss  # noqa: E402
from monai.networks.nets import PatchDiscriminator  # noqa: E402

from bundle.dense_contrastive import DenseContrastiveLoss  # noqa: E402
from bundle.distributed import setup, wrap  # noqa: E402
from bundle.networks import DiscriminatorPair, MultiConDoSGenerators, unwrap  # noqa: E402
from bundle.trainer import MultiConDoSTrainer  # noqa: E402
from conftest import paired_batches, paper_loss  # noqa: E402


def main(out: str, steps: int = 2, global_batch: int = 4) -> None:
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        setup()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    local = os.environ.get("LOCAL") == "1"
    gens = MultiConDoSGenerators(
        features=(8, 8, 16, 16, 32, 8),
        projection_hidden=16,
        projection_dim=8,
        local_level="down_4" if local else None,
        local_projection_dim=8,
    )
    discs = DiscriminatorPair(
        *[PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=3, norm="INSTANCE") for _ in "ab"]
    )
    # plain SGD: Adam would turn the ~0 gradients of the biases before instance norm (rounding noise that differs
    # with the reduction order) into full-size steps. 2 steps: the contrastive gradient through the tiny projections of
    # a fresh N(0, 0.02) head is so large that rounding differences grow by orders of magnitude from the 3rd step on
    g_opt = torch.optim.SGD(gens.parameters(), lr=0.05)
    d_opt = torch.optim.SGD(discs.parameters(), lr=0.05)
    if distributed:
        gens, discs = wrap(gens, False), wrap(discs, False)
    batches = paired_batches(n_batches=steps, batch=global_batch)
    per_rank = global_batch // world
    shares = [{k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in b.items()} for b in batches]
    adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    trainer = MultiConDoSTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=shares,
        generators=gens,
        discriminators=discs,
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        generator_loss=paper_loss(
            adversarial,
            ContrastiveLoss(temperature=0.5),
            contrastive_all_ranks=True,
            # all locations (a 32x32 slice has 2x2 at the bottleneck): the draw does not depend on the rank's RNG
            local_contrastive_loss=DenseContrastiveLoss(num_samples=64, all_ranks=True) if local else None,
            **{
                f"lambda_{k}": float(v)
                for k, v in (kv.split("=") for kv in os.environ.get("WEIGHTS", "").split(",") if kv)
            },
        ),
        adversarial_loss=adversarial,
        keys=("t1", "t2"),
        image_pool_size=0,
    )
    trainer.run()
    state = {"generators": unwrap(gens).state_dict(), "discriminators": unwrap(discs).state_dict()}
    torch.save(state, out if rank == 0 else f"{out}.rank{rank}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], steps=int(os.environ.get("STEPS", 2)))
