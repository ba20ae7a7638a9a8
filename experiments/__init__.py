"""Experiments run with sbd: the small-scale study of the paper's claims and the sampler
frontier, whose results are docs/results.md.

What it is: clients of the `sbdcli` library (prepare, train, the sample-set loop of
`sbdcli.pipeline.sweep`, Gen PPL evaluation, the markdown table writer) with their own
command lines, run from the repository root as modules:

    python -m experiments.study STEP ...      # the study (study.py lists the steps)
    python -m experiments.frontier STEP ...   # the sampler frontier
    bash experiments/study_run.sh [DIR]       # the study's compute, both datasets

What it is not: part of the installed package, a test, or a speed benchmark (bench/).
"""
