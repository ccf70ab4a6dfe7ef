"""`from distill.training.trainer import train` and the loop's names, where they were before issue
36 split the module: the loop (Trainer, TrainState) is training/loop.py, a recipe's stages
(train) training/run.py, the resume check training/checkpoint.py."""

from distill.training.checkpoint import check_resumed_recipe  # noqa: F401
from distill.training.loop import LOG_EVERY, Trainer, TrainState  # noqa: F401
from distill.training.run import STAGE1_KEYS, train  # noqa: F401
