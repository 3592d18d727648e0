"""The experiment's arms: each a label and the config overrides it makes on top of the run every arm shares
(`python -m rlsc_jax.experiment --arms ...`)."""

# name -> (label, overrides on top of the default run)
ARMS = {
    "rlsc_l2": ("RLSC L2", ["objective=rlsc_l2"]),
    "rlsc_l1": ("RLSC L1", ["objective=rlsc_l1"]),
    "rlsc_l2_topk": ("RLSC L2, sampler top-k 50 (the paper's)", ["objective=rlsc_l2", "sampling.top_k=50"]),
    "rlsc_l2_topp": ("RLSC L2, sampler top-p 0.9", ["objective=rlsc_l2", "sampling.top_p=0.9"]),
    "entropy_min": ("entropy minimisation (EM-FT)", ["objective=entropy_min"]),
    "ttrl": ("TTRL (majority-vote reward)", ["objective=ttrl"]),
    "self_certainty": ("Intuitor (self-certainty reward)", ["objective=self_certainty"]),
    "paper_batch": ("RLSC L2, paper's batch: 1 question x 20 steps, lr 1e-5",
                    ["objective=rlsc_l2", "questions_per_step=1", "steps=20", "optim.lr=1e-5"]),
}
