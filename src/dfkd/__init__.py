"""dfkd: data-free knowledge distillation for PyTorch (CuDFKD and its baselines)."""

import dfkd.launcher_watch  # noqa: F401  (first: torchrun workers die with their launcher)
from dfkd.api import distill
from dfkd.config import RunConfig, load_config
from dfkd.errors import ConfigError, DatasetError, DfkdError
from dfkd.methods import get_method, list_methods
from dfkd.models import create_model, list_models
from dfkd.teachers import BlackBoxTeacher

__version__ = "0.2.0"
__all__ = ["BlackBoxTeacher", "ConfigError", "DatasetError", "DfkdError", "RunConfig",
           "create_model", "distill", "get_method", "list_methods", "list_models", "load_config"]
