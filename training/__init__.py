"""What `python train.py` runs, in three rooms: setting the run up (training/setup.py, with its data in
training/data.py), the loop (training/loop.py, each optimisation step in training/step.py), and scoring it
(training/evaluation.py). What a run writes besides its model folder (checkpoint state, metrics.jsonl,
curves, TensorBoard) is in training/run_files.py; its settings, TrainConfig and the presets, are in
training/config.py."""

import os

from training.evaluation import final_report
from training.loop import training_loop
from training.run_files import out_lock
from training.setup import finish, start_run


def train(config):
    """Set up the run (or resume it), train to the end or until stopped, then report on the test split. One run
    at a time writes to config.out (process 0 holds its lock; RANK is torchrun's)."""
    with out_lock(config.out, lead=os.environ.get("RANK", "0") == "0"):
        run = start_run(config)
        if training_loop(run) and run.lead:
            final_report(run)
        if run.board is not None:
            run.board.close()
        return finish(run.model, run.world)


__all__ = ["train"]
