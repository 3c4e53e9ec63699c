"""A run's method, built on the run's device: the context it is handed (the frozen teacher,
the student, the image geometry, where and how to compute) and its modules compiled when
``compile`` asks for it."""

from __future__ import annotations

import torch
from torch import nn

from dfkd.config import RunConfig
from dfkd.errors import DfkdError
from dfkd.frozen_teacher import FrozenTeacher, GraphedForward
from dfkd.hooks import batchnorm_layers
from dfkd.methods import Method, MethodContext, bn_free_methods, get_method, list_methods
from dfkd.methods.base import warn
from dfkd.run.device import Placement
from dfkd.run.spec import ImageSpec
from dfkd.run.student import schedule_factor
from dfkd.teachers import is_blackbox


def build_method(cfg: RunConfig, spec: ImageSpec, place: Placement, teacher: FrozenTeacher,
                 student: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> Method:
    method_cls = get_method(cfg.method)
    if method_cls.needs_white_box and is_blackbox(teacher):
        able = [n for n in list_methods() if not get_method(n).needs_white_box]
        raise DfkdError(f"method '{cfg.method}' needs more of the teacher than its answers (a "
                        "gradient through it, or its layers), and this teacher is a black box; "
                        f"the methods that can learn from one: {', '.join(able)} (--method "
                        f"{able[0]}, or name no method)")
    if method_cls.uses_bn(cfg.method_settings) and not batchnorm_layers(teacher):
        raise DfkdError(f"method '{cfg.method}' matches the teacher's BatchNorm statistics, "
                        "but the teacher has no BatchNorm layer; set "
                        f"{cfg.method}.w_bn=0 to run it without that term, or pick a "
                        f"method that needs none ({', '.join(bn_free_methods())})")
    # DDP: each rank synthesises batch_size / world samples; S and G are wrapped so their
    # gradients are averaged. Rank 0's initial weights are broadcast at wrap time.
    ctx = MethodContext(
        teacher=teacher, student=place.wrap(student), student_raw=student,
        num_classes=spec.num_classes, image_shape=tuple(spec.image_shape), mean=mean, std=std,
        device=place.device, batch_size=cfg.batch_size // place.dist.world_size,
        epochs=cfg.epochs, g_steps=cfg.g_steps, generator=cfg.generator, wrap=place.wrap,
        autocast=place.autocast,
        channels_last=place.channels_last,
        # CUDA only; on CPU the teacher runs as usual (documented, like amp).
        teacher_infer=GraphedForward(teacher) if place.cuda and cfg.teacher_graph else None,
        lr_factor=lambda epoch: schedule_factor(cfg.student_optim, cfg.epochs, epoch))
    method = method_cls(ctx, cfg.method_settings)
    if method.warmup_epochs >= cfg.epochs:
        warn(f"{cfg.method}.warmup is {method.warmup_epochs} epochs and the run has "
             f"{cfg.epochs}: the student never trains; set {cfg.method}.warmup below epochs")
    if cfg.compile:   # wrappers that share the parameters of the plain modules
        ctx.student = torch.compile(ctx.student)
        method.compile_modules(torch.compile)
    return method
