"""The registered objectives written in PyTorch from their papers' formulas, independently of rlsc_jax: the
references for tests/test_objectives.py (per-sequence inputs) and tests/test_training.py (a whole step)."""

import torch


def loss(name: str, logp, entropy, certainty, lengths, majority, num_samples: int, alpha: float = 0.1,
         eps: float = 1e-6) -> torch.Tensor:
    """The objective `name` on [Q * N] per-sequence tensors (question q's samples adjacent); `majority` is 1
    where a sample's answer is its question's majority answer, else 0."""
    def by_q(x):
        return x.view(-1, num_samples)

    def policy_gradient(reward):  # group-normalised advantage (torch.std: Bessel-corrected), -Σ A log p / N
        r = by_q(reward)
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
        return -(adv * by_q(logp)).sum(1).mean() / num_samples

    if name in ("rlsc_l1", "rlsc_l2"):
        weight = logp.detach().exp() + (alpha if name == "rlsc_l2" else 0.0)
        return -by_q(weight * logp).sum(1).mean()
    if name == "rlsc_group":
        return -(torch.softmax(by_q(logp.detach()), 1) * by_q(logp)).sum(1).mean()
    if name == "entropy_min":
        return entropy.sum() / lengths.sum()
    if name == "ttrl":
        return policy_gradient(majority)
    if name == "self_certainty":
        return policy_gradient(certainty.detach() / lengths)
    if name == "nll":
        return -logp.mean()
    raise ValueError(f"no PyTorch reference for {name!r}")
