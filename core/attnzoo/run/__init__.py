"""One run, start to finish: assembly (a run put together from its recipe), trainer (the loop),
checkpoint, rundir (what a run directory holds), extend, eta, metrics, analysis, evaluate,
robustness, cost and bench."""
