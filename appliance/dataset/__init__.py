"""Training data from the appliance's own runs: filtered SFT trajectories and DPO pairs by answer correctness.

`appliance dataset build` (cli.py) selects runs from the history, scores them
(eval results, users' labels), applies the paper's filters (filters.py), pairs
correct and incorrect runs of the same prompt (build.py) and writes the
directory (files.py). See docs/dataset.md.
"""
