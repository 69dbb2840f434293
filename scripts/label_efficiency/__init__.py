# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
The label-efficiency benchmark behind ``scripts/benchmark.py`` (its CLI), one module a concern:

- ``plan``: the methods, the grids and the planned runs;
- ``runner``: running the bundle configs in-process;
- ``results``: reading what a run wrote (init line, validation, losses, metrics);
- ``checks``: the checks that abort the benchmark (subjects, output folder);
- ``stats``: statistics of the result rows (mean ± std, paired differences with cluster-bootstrap intervals);
- ``timing``: wall-time estimates from measured per-iteration times;
- ``report``: ``results.csv`` and ``results.md``; ``plots``: ``label_efficiency.png``;
- ``protocol``: the loop that plans, runs or resumes, checks and reports.
"""
