"""`python -m vdvae_zoo ...` and `torchrun --nproc_per_node N -m vdvae_zoo finetune ...`: the `vdvae-zoo` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="vdvae-zoo")
