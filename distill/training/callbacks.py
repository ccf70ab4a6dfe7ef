"""Training callbacks: a small interface and the built-in ones (progress bar, log.jsonl, wandb).

A callback implements any of
    on_train_begin(state)            once, before the first step (also after a resume)
    on_step_end(state, metrics)      after every optimizer step; metrics: loss parts (averaged and
                                     refreshed every LOG_EVERY steps: reading them forces a device sync),
                                     lr, sentences/s
    evaluate(state) -> scores        at every evaluation point (evaluators: training/evaluators.py)
    on_evaluate(state, scores)       after every evaluation, with all evaluators' scores
    on_train_end(state, results)     once, with the best student in place; may add to results
`state` is the trainer's TrainState: step, epoch, total_steps, best score, run dir, and the student
being trained (`state.student`, `state.head`; `state.embedder()` embeds sentences with it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

LOG_EVERY = 10  # steps between the trainer's reads of the loss values from the device (each read is a sync)


class Callback:
    def on_train_begin(self, state) -> None: ...

    def on_step_end(self, state, metrics: dict) -> None: ...

    def on_evaluate(self, state, scores: dict) -> None: ...

    def on_train_end(self, state, results: dict) -> None: ...


class ProgressBar(Callback):
    """tqdm over optimizer steps with loss, lr and sentences/s."""

    def __init__(self, enabled: bool = True, desc: str = "train"):
        self.enabled, self.bar, self.desc = enabled, None, desc

    def on_train_begin(self, state) -> None:
        self.bar = tqdm(total=state.total_steps, initial=state.step, desc=self.desc, unit="step", disable=not self.enabled, dynamic_ncols=True)

    def on_step_end(self, state, metrics: dict) -> None:
        self.bar.update(1)
        if (state.step % LOG_EVERY == 0 or state.step == state.total_steps) and "loss" in metrics:
            extra = {"ib": f"{metrics['ib_share']:.2%}"} if "ib_share" in metrics else {}  # the IB term's share of the gradient on s
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", **extra, lr=f"{metrics['lr']:.2e}", sent_s=f"{metrics['sentences_per_s']:.0f}", refresh=False)

    def on_evaluate(self, state, scores: dict) -> None:
        self.bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) + f" (best {state.best_score:.2f} at step {state.best_step})")

    def on_train_end(self, state, results: dict) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonlLog(Callback):
    """log.jsonl in the run folder: one line per step (every `every` steps) and per evaluation."""

    def __init__(self, run_dir: Path, every: int = LOG_EVERY):
        self.path, self.every = Path(run_dir) / "log.jsonl", every

    def _write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_step_end(self, state, metrics: dict) -> None:
        if state.step % self.every == 0 or state.step == state.total_steps:
            self._write({"step": state.step, "epoch": state.epoch, "time": time.time(), **metrics})

    def on_evaluate(self, state, scores: dict) -> None:
        self._write({"step": state.step, "epoch": state.epoch, "eval": scores})


class WandbCallback(Callback):
    """Weights & Biases: run config, losses, dev scores, final table. WANDB_MODE=offline works offline."""

    def __init__(self, project: str, config: dict, run_dir: Path, name: str | None = None):
        try:
            import wandb
        except ImportError:
            from distill.errors import DistillError

            raise DistillError("output.wandb is on but wandb is not installed (pip install 'distill[wandb]')") from None
        self.wandb = wandb
        self.run = wandb.init(project=project, config=config, dir=str(run_dir), name=name or Path(run_dir).name, reinit=True)

    def on_step_end(self, state, metrics: dict) -> None:
        if state.step % LOG_EVERY == 0 or state.step == state.total_steps:  # metrics are refreshed every LOG_EVERY steps
            self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=state.step)

    def on_evaluate(self, state, scores: dict) -> None:
        self.run.log({f"eval/{k}": v for k, v in scores.items()}, step=state.step)

    def on_train_end(self, state, results: dict) -> None:
        scores = results.get("best", {})
        if scores:
            self.run.log({"final": self.wandb.Table(columns=list(scores), data=[list(scores.values())])}, step=state.step)
            self.run.summary.update({f"final/{k}": v for k, v in scores.items()})
        retrieval = results.get("retrieval") or {}  # eval.final_retrieval, x100
        self.run.summary.update({f"final_retrieval/{k}": v for k, v in retrieval.items() if k.startswith(("nDCG@", "MRR@", "Recall@"))})
        self.run.finish()
