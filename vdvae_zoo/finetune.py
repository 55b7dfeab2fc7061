"""`python -m vdvae_zoo.finetune` (and `torchrun ... -m vdvae_zoo.finetune`): the `vdvae-zoo finetune` command.

Importing this module keeps `vdvae_zoo.finetune(...)` callable: the module object forwards calls to
`vdvae_zoo.train.finetune`.
"""

import sys
import types

from .train import finetune as _finetune


class _CallableModule(types.ModuleType):
    def __call__(self, **kwargs):
        return _finetune(**kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    from .cli import finetune_command
    finetune_command(prog_name="python -m vdvae_zoo.finetune")
