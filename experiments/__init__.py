"""Experiments run with sbd: the small-scale study of the paper's claims, the sampler
frontier and the error correction of `sbd edit`, whose results are docs/results.md, and
the lm-eval / MAUVE measurements of docs/evaluation.md.

What it is: clients of the `sbdcli` library (prepare, train, the sample-set loop of
`sbdcli.pipeline.sweep`, Gen PPL evaluation, the markdown table writer) with their own
command lines, run from the repository root as modules:

    python -m experiments.study STEP ...      # the study (study.py lists the steps)
    python -m experiments.frontier STEP ...   # the sampler frontier
    python -m experiments.edit_correction STEP ...   # sbd edit on corrupted true samples
    python -m experiments.harness_measure STEP ...   # the lm-eval bound's variance, MAUVE
    bash experiments/study_run.sh [DIR]       # the study's compute, both datasets

What it is not: part of the installed package, a test, or a speed benchmark (bench/; its
timer, bench/timer.py, times the experiments too).
"""
