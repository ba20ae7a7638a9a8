"""The math of block diffusion on token tensors: noise, loss, sampling, remask scores.

- schedule.py: log-linear noise schedule, antithetic noise levels, mask drawing;
- loss.py: block NELBO with SUBS, variance-minimising clip search;
- sampler.py: draft and revise with the exact KV cache, float64 categorical draws, nucleus;
- reveal.py: how many positions a sampler call reveals (fixed, reference, threshold);
- remask.py: remask scores (snapshot, random, post-hoc, k-pass masked) and selection.
- degenerate.py: unigram entropy of a token window, BD3-LM's degenerate-sample rule;
- precision.py: the arithmetic of inference-time network calls (fp32, bf16 autocast).

Imports only torch, config and errors: no files, no records, no CLI.
"""
