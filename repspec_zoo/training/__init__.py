"""Accelerate training recipes: config, data, model + regularizer, loop, checkpoints, report.

``recipes/train.py`` strings these together; each piece is usable on its own::

    cfg = load_config("recipes/configs/fmnist_slp_repspectral.yaml", ["epochs=2"])
"""
from .checkpoint import CheckpointError, Checkpoints, checkpoint_problem
from .config import ConfigError, TrainConfig, apply_overrides, config_to_dict, load_config, save_run_config
from .loaders import ToyDataset, data_summary, dataset_num_classes, recipe_split, make_loaders
from .loop import MetricsLog, Trainer, TrainState, make_accelerator
from .model import (InitError, TrainingModule, build_model, build_optimizer, check_input, lr_factor,
                    plain_state_dict)
from .report import quick_eval, run_summary, save_weights, summary_table, unsynced_tensors

__all__ = [
    "Checkpoints", "ConfigError", "TrainConfig", "apply_overrides", "config_to_dict", "load_config",
    "save_run_config", "ToyDataset", "dataset_num_classes", "recipe_split", "make_loaders", "MetricsLog",
    "Trainer", "TrainState", "make_accelerator", "InitError", "TrainingModule", "build_model", "build_optimizer",
    "check_input", "lr_factor", "plain_state_dict", "quick_eval", "run_summary", "save_weights", "summary_table",
    "unsynced_tensors", "CheckpointError", "checkpoint_problem", "data_summary",
]
