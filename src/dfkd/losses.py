"""Loss terms shared by the methods. Per-sample variants return shape (B,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float,
          per_sample: bool = False) -> torch.Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)); batchmean unless per_sample."""
    log_p_s = F.log_softmax(student.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher.float() / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * tau**2
    return kl if per_sample else kl.mean()


def kd_l1(student: torch.Tensor, teacher: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Mean absolute difference of logits (DFAD's loss and CuDFKD's ``l1``)."""
    diff = (student.float() - teacher.float()).abs().mean(dim=1)
    return diff if per_sample else diff.mean()


def entropy_of_mean(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """H(p_bar): entropy of the batch-mean prediction (high = balanced classes)."""
    p_mean = F.softmax(logits.float() / tau, dim=1).mean(dim=0)
    return -(p_mean * torch.log(p_mean.clamp_min(1e-12))).sum()


def onehot_ce(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the teacher's logits against their own argmax (confidence), or
    against given ``labels`` (the classes a conditioned generator was asked for)."""
    return F.cross_entropy(logits.float(), logits.detach().argmax(dim=1) if labels is None
                           else labels)


def top2_tie_ce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against an even split between its own two most likely
    classes, -(log p_1 + log p_2) / 2, averaged over rows: 0.69 (log 2) at best, when the
    two share all the probability; large when one dominates or the rest hold much."""
    return -logits.float().log_softmax(dim=1).topk(2, dim=1).values.mean()


def masked_adversarial(student: torch.Tensor, teacher: torch.Tensor, tau: float = 3.0
                       ) -> torch.Tensor:
    """CuDFKD's L_adv = -mean_i[1[argmax s_i == argmax t_i] * tau^2 * KL(t_i || s_i)].

    Only samples on which S already agrees with T push the generator, so it
    looks for samples the student has right in class but wrong in distribution.
    """
    agree = (student.argmax(dim=1) == teacher.argmax(dim=1)).float()
    return -(agree * kd_kl(student, teacher, tau, per_sample=True)).mean()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence in nats between probability rows, in float64.

    Near-identical rows have a JSD of 1e-8 or less; float32 rounding of the logs is larger
    than that, and the roots that loyalty takes (JSD^(1/2), JSD^(1/4)) magnify the bias.
    """
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log()),
                           torch.zeros_like(a)).sum(dim=1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0.0)


def activation_l1(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation term: the mean absolute penultimate activation.

    The paper writes (1/n) sum_i ||f_i||_1; its official code takes ``f.abs().mean()``,
    i.e. also divides by the feature width, which keeps the 0.1 weight independent of it.
    """
    return features.float().abs().mean()


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatial attention (Zagoruyko & Komodakis): the channel mean of the squared
    activation, average-pooled to ``size`` if given, flattened and L2-normalised
    per sample. (B, C, H, W) -> (B, H * W)."""
    a = features.float().pow(2).mean(dim=1)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a.unsqueeze(1), size).squeeze(1)
    return F.normalize(a.flatten(1), dim=1)


def attention_transfer(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layer pairs of mean((a_s - a_t)^2), the form of ZSKT's released code.

    A pair whose maps differ in size is compared at the smaller one (average pooling).
    No pair: 0.
    """
    if not teacher:
        return torch.zeros(())
    total = torch.zeros((), device=teacher[0].device)
    for fs, ft in zip(student, teacher, strict=True):
        size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
        total = total + (attention_map(fs, size) - attention_map(ft, size)).pow(2).mean()
    return total


def similarity_preserving(student: list[torch.Tensor],
                          teacher: list[torch.Tensor]) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): the sum over layer pairs of
    mean((G_s - G_t)^2), with G = row-L2-normalised Q Q^T the (B, B) similarities of the
    batch's flattened activations Q. It compares samples with each other, never channels
    or positions, so any two layers compare, whatever their widths and map sizes. The
    products are taken in float32, also under autocast. No pair: 0."""
    if not teacher:
        return torch.zeros(())
    device = teacher[0].device
    total = torch.zeros((), device=device)
    with torch.autocast(device.type, enabled=False):
        for fs, ft in zip(student, teacher, strict=True):
            sims = [F.normalize(q @ q.T, dim=1)
                    for q in (fs.float().flatten(1), ft.float().flatten(1))]
            total = total + (sims[0] - sims[1]).pow(2).mean()
    return total


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's image prior R_TV: the sum of the L2 norms (over the whole batch) of
    the differences between each pixel and its right, lower, lower-right and upper-right
    neighbours."""
    x = images.float()
    diffs = (x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :],
             x[..., 1:, 1:] - x[..., :-1, :-1], x[..., :-1, 1:] - x[..., 1:, :-1])
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor,
             negatives: torch.Tensor | None = None, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE with cosine similarity: row i of ``anchors`` should pick row i of
    ``positives`` among all positives and the extra ``negatives`` (e.g. a bank).

    loss = mean_i -log( exp(a_i.p_i / T) / (sum_j exp(a_i.p_j / T) + sum_k exp(a_i.n_k / T)) )
    with every vector L2-normalised.
    """
    a = F.normalize(anchors.float(), dim=1)
    keys = positives.float() if negatives is None else torch.cat([positives.float(),
                                                                 negatives.float()])
    logits = a @ F.normalize(keys, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
