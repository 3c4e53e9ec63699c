"""A data-free signal of progress: the student against the teacher on a fixed synthetic set.

A user with no data cannot read a test accuracy, so every run measures, after each epoch,
how well the student imitates the teacher on a **probe**: ``synthetic_probe`` (default 1024)
synthetic images that no student step ever sees. ``synthetic_agreement`` is the % of probe
images on which the student's top class is the teacher's; ``synthetic_loyalty`` is the
paper's probability loyalty, ``1 - sqrt(JSD(p_S, p_T))``, on the probe; ``synthetic_kl`` is
KL(p_T || p_S) at temperature 1, the student's loss on a set that does not move.

Where the probe comes from, and why there:

* **Its own generator, not the run's sample source.** The probe is drawn once, at the start
  of the run, from a small generator of its own, trained for ``PROBE_STEPS`` steps against
  the teacher alone (its BatchNorm statistics, one-hot confidence and class balance: the
  "easy" samples of DAFL and CuDFKD's early epochs), from a fixed seed. It is therefore the
  same for every run on a given teacher, whatever the method, its settings or the run's seed,
  so two runs' signals compare on one yardstick, which is what choosing between runs needs.
  (On CPU it is made on one thread, whatever the run's thread count: faster on busy cores,
  and the same images whatever the count, which float sums would otherwise change.)
  A probe taken from each run's own sample source would not: a collapsed generator yields
  a one-class probe on which a collapsed student scores 100%. Bank rows (``bank.latest``)
  were also trained on, and the run's generator at epoch 0 is still random noise.
* **Class-balanced.** 1.5 x ``size`` candidates are drawn and as equal a number of each of
  the teacher's classes as they allow is kept, so a student that always answers one class
  scores near chance (100 / classes %), which is what the "not learning" warning tests.
* **Fixed, and saved.** The images are stored as 8-bit pixels, like a real dataset, with the
  teacher's logits on them, in the checkpoint: a resumed run measures on exactly the same
  set, and exact resume holds (the probe is built inside ``torch.random.fork_rng``, so it
  consumes none of the run's random numbers, and it never trains anything the run uses:
  a run's other metrics are bit-identical with the signal on or off).

Its cost: ``PROBE_STEPS`` steps of a generator half the width of the runs' default, once
(2-4 s on 2 busy CPU cores for a LeNet-5 teacher; cached in-process per teacher, so the
trials of a tune pay it once), and one student forward pass over the probe per epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.generators import Generator, default_generator_size
from dfkd.hooks import BNStatsHook, batchnorm_layers
from dfkd.losses import entropy_of_mean, kd_kl, onehot_ce
from dfkd.metrics import fidelity_metrics, predict

PROBE_SEED = 20231115       # the probe's own seed: the same probe for every run of a teacher
PROBE_STEPS = 60            # generator steps that make the probe
PROBE_BATCH = 64
PROBE_LR = 0.01
PROBE_W_ENT = 5.0           # weight of the class-balance term (DAFL's)
PROBE_CANDIDATES = 1.5      # candidates drawn per probe image, for the class balance
KEYS = ("synthetic_agreement", "synthetic_loyalty", "synthetic_kl")
_CACHE: OrderedDict[str, dict[str, Any]] = OrderedDict()
_CACHE_SIZE = 4


def _fingerprint(teacher: nn.Module, image_shape, mean, std, size: int, device) -> str:
    """What decides the probe: the teacher's weights and buffers, the geometry, the size."""
    h = hashlib.sha1()
    h.update(json.dumps([list(image_shape), [float(m) for m in mean],
                         [float(s) for s in std], size, str(device), PROBE_SEED, PROBE_STEPS,
                         PROBE_BATCH, PROBE_LR, PROBE_W_ENT]).encode())
    for name, tensor in teacher.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                 .tobytes() if tensor.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def _cpu_threads(n: int):
    """Run with ``n`` CPU threads (0: as they are), then restore the count. The probe's
    small ops run best on one thread: with two on 2 busy cores (other runs, a test suite),
    OpenMP's waiting made it 20 times slower (73 s instead of 3 s) in our measurements."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != before:
            torch.set_num_threads(before)


def _balanced(classes: torch.Tensor, size: int, num_classes: int) -> torch.Tensor:
    """Indices of ``size`` candidates, as equally many of each class as there are: classes
    take turns, each giving its next candidate in draw order; then sorted."""
    per_class = [torch.nonzero(classes == c).flatten().tolist() for c in range(num_classes)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        took = False
        for rows in per_class:
            if depth < len(rows) and len(chosen) < size:
                chosen.append(rows[depth])
                took = True
        if not took:
            break
        depth += 1
    return torch.tensor(sorted(chosen), dtype=torch.long)


def build_probe(teacher: nn.Module, image_shape: tuple[int, int, int], num_classes: int,
                mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                size: int) -> dict[str, Any]:
    """The probe: ``images`` (uint8, size x C x H x W, on CPU) and the teacher's ``logits``
    on them (float32, CPU). Uses no random numbers of the caller's (``fork_rng``)."""
    key = _fingerprint(teacher, image_shape, mean.flatten().tolist(), std.flatten().tolist(),
                       size, device)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return {k: v.clone() for k, v in _CACHE[key].items()}
    devices = [device.index or 0] if device.type == "cuda" else []
    channels, height, width = image_shape
    with torch.random.fork_rng(devices=devices), _cpu_threads(1 if device.type == "cpu" else 0):
        torch.manual_seed(PROBE_SEED)
        g_size = default_generator_size(tuple(image_shape))
        # Half the width of the runs' default generator: the probe needs variety and
        # confident, balanced classes, not fine detail, and it is made at every run's start.
        # Sides its up-sampling cannot reach exactly are drawn larger and resized.
        scale = 2 ** g_size.stages
        drawn = (channels, -(-height // scale) * scale, -(-width // scale) * scale)
        net = Generator(g_size.nz, max(4, g_size.ngf // 2), drawn, width=g_size.width,
                        stages=g_size.stages).to(device)

        def gen(z: torch.Tensor) -> torch.Tensor:
            x = net(z)
            if x.shape[-2:] != (height, width):
                x = F.interpolate(x, size=(height, width), mode="bilinear",
                                  align_corners=False)
            return x

        opt = torch.optim.Adam(net.parameters(), lr=PROBE_LR, betas=(0.5, 0.999))
        hook = BNStatsHook(teacher) if batchnorm_layers(teacher) else None
        try:
            for _ in range(PROBE_STEPS):
                x = (gen(torch.randn(PROBE_BATCH, g_size.nz, device=device)) - mean) / std
                with hook if hook is not None else contextlib.nullcontext():
                    t = teacher(x)
                loss = onehot_ce(t) - PROBE_W_ENT * entropy_of_mean(t)
                if hook is not None:
                    loss = loss + hook.loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            if hook is not None:
                hook.remove()
        net.eval()
        images, logits = [], []
        with torch.no_grad():
            for _ in range(math.ceil(PROBE_CANDIDATES * size / PROBE_BATCH)):
                x01 = gen(torch.randn(PROBE_BATCH, g_size.nz, device=device))
                pixels = (x01.float() * 255).round().clamp(0, 255).to(torch.uint8)
                images.append(pixels.contiguous().cpu())
                logits.append(teacher((pixels.float() / 255 - mean) / std).float().cpu())
    images_all, logits_all = torch.cat(images), torch.cat(logits)
    keep = _balanced(logits_all.argmax(1), size, num_classes)
    probe = {"images": images_all[keep].contiguous(), "logits": logits_all[keep].contiguous()}
    _CACHE[key] = probe
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return {k: v.clone() for k, v in probe.items()}


NOTICE_SECONDS = 10.0       # a probe expected to take longer is announced, with its off switch
ESTIMATE_BATCH = 8          # the batch whose step is timed to estimate the probe's cost


def expected_seconds(teacher: nn.Module, image_shape: tuple[int, int, int],
                     mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                     size: int) -> float:
    """About how long :func:`build_probe` will take: 0 when it is cached, else one of its
    generator steps, timed, times the steps and candidate batches it makes. Draws none of
    the caller's random numbers and changes nothing."""
    key = _fingerprint(teacher, image_shape, mean.flatten().tolist(), std.flatten().tolist(),
                       size, device)
    if key in _CACHE:
        return 0.0
    devices = [device.index or 0] if device.type == "cuda" else []
    g_size = default_generator_size(tuple(image_shape))
    scale = 2 ** g_size.stages
    channels, height, width = image_shape
    drawn = (channels, -(-height // scale) * scale, -(-width // scale) * scale)
    with torch.random.fork_rng(devices=devices), _cpu_threads(1 if device.type == "cpu" else 0):
        net = Generator(g_size.nz, max(4, g_size.ngf // 2), drawn, width=g_size.width,
                        stages=g_size.stages).to(device)
        def step(batch: int) -> float:
            z = torch.randn(batch, g_size.nz, device=device)
            t0 = time.perf_counter()
            x = net(z)
            if drawn[1:] != (height, width):
                x = F.interpolate(x, size=(height, width))
            teacher((x - mean) / std).float().logsumexp(1).mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        step(2)   # warm-up: a process's first forward pays one-off set-up costs
        # A small batch, scaled: the estimate costs a fraction of one of the probe's steps.
        seconds = step(ESTIMATE_BATCH) * PROBE_BATCH / ESTIMATE_BATCH
    for p in teacher.parameters():   # a teacher that requires grad keeps none of this one
        p.grad = None
    batches = math.ceil(PROBE_CANDIDATES * size / PROBE_BATCH)
    # Each candidate batch is a forward only: about a third of a step.
    return seconds * (PROBE_STEPS + batches / 3)


class SyntheticProbe:
    """The fixed probe of one run and the student's scores on it (see the module's text)."""

    def __init__(self, images: torch.Tensor, logits: torch.Tensor,
                 initial: dict[str, float] | None = None, seconds: float = 0.0) -> None:
        self.images = images        # uint8, on CPU
        self.logits = logits        # the teacher's, float32, on CPU
        self.initial = initial      # the student's scores before its first step (or None)
        self.seconds = seconds      # time it took to make

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @classmethod
    def create(cls, teacher: nn.Module, image_shape, num_classes: int, mean: torch.Tensor,
               std: torch.Tensor, device: torch.device, size: int) -> SyntheticProbe:
        t0 = time.perf_counter()
        probe = build_probe(teacher, image_shape, num_classes, mean, std, device, size)
        return cls(probe["images"], probe["logits"], seconds=time.perf_counter() - t0)

    def measure(self, student: nn.Module, batch_size: int, transform,
                device: torch.device, baseline: bool = False) -> dict[str, float]:
        """The student's synthetic_agreement (%), synthetic_loyalty and synthetic_kl;
        ``baseline``: these are the untrained student's (kept as ``initial``)."""
        s = predict(student, self.images, batch_size, transform, device)
        t = self.logits
        m = fidelity_metrics(s, t, t.argmax(1))
        scores = {"synthetic_agreement": m["agreement"], "synthetic_loyalty": m["loyalty"],
                  "synthetic_kl": kd_kl(s, t, 1.0).item()}
        if baseline:
            self.initial = dict(scores)
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "logits": self.logits, "initial": self.initial,
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SyntheticProbe:
        return cls(state["images"], state["logits"], state.get("initial"),
                   float(state.get("seconds", 0.0)))


# ---------------------------------------------------------------- trusting it between runs
def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN under 3 pairs or when
    one side is constant."""
    if len(x) != len(y):
        raise ValueError("spearman needs two lists of the same length")
    if len(x) < 3:
        return math.nan

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return math.nan if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def signal_correlation(pairs: Iterable[tuple[float | None, float | None]]) -> dict[str, Any]:
    """``{"n", "spearman"}`` over the (signal, accuracy) pairs where both are known."""
    known = [(a, b) for a, b in pairs if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    rho = spearman([a for a, _ in known], [b for _, b in known])
    return {"n": len(known), "spearman": None if math.isnan(rho) else rho}


def run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Every finished run (a folder with summary.json) at or below the given paths."""
    found: list[Path] = []
    for path in map(Path, paths):
        found += [p.parent for p in sorted(path.rglob("summary.json"))]
    return list(dict.fromkeys(found))


def correlation_of_runs(paths: Iterable[str | Path]) -> dict[str, Any]:
    """How well the final synthetic signal ranks finished runs as their final accuracy on
    real data does (summary.json's final_acc1, on the run's eval_split): Spearman's rho of
    final_synthetic_agreement and of final_synthetic_loyalty with final_acc1."""
    summaries = [json.loads((f / "summary.json").read_text()) for f in run_folders(paths)]
    out: dict[str, Any] = {"runs": len(summaries),
                           "eval_splits": sorted({str(s.get("eval_split")) for s in summaries})}
    for key in ("synthetic_agreement", "synthetic_loyalty"):
        out[key] = signal_correlation((s.get(f"final_{key}"), s.get("final_acc1"))
                                      for s in summaries)
    return out
