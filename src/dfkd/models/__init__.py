"""Model zoo: the architectures of the DFKD literature, found by name.

Every model's ``forward(x, return_features=False)`` returns logits, or
``(logits, features)`` where ``features`` is the penultimate (pre-classifier)
activation that methods such as DAFL need. Intermediate activations are read
with forward hooks (see :mod:`dfkd.hooks`), so user models work unmodified.
"""

from dfkd.models import lenet, resnet, vgg, wrn  # noqa: F401  (registration)
from dfkd.models.registry import (
    SPEC_HELP,
    create_model,
    list_models,
    register_model,
    resolve_spec,
)

__all__ = ["SPEC_HELP", "create_model", "list_models", "register_model", "resolve_spec"]
