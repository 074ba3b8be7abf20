"""Training and evaluation: recipes as data (recipes), the loop and its checkpoints
(trainer), process layouts (dist), a resumable sampler (sampler), exact-match evaluation
(evaluate), the loss curve (plot)."""
from slime_core.train.evaluate import exact_match, load_questions, normalize_answer
from slime_core.train.recipes import RECIPES, Stage, as_stages, configure, scaled
from slime_core.train.sampler import ResumableSampler
from slime_core.train.trainer import (Trainer, latest_checkpoint, load_checkpoint, lr_scale,
                                      run_recipe)

__all__ = ["RECIPES", "ResumableSampler", "Stage", "Trainer", "as_stages", "configure",
           "exact_match", "latest_checkpoint", "load_checkpoint",
           "load_questions", "lr_scale", "normalize_answer", "run_recipe", "scaled"]
