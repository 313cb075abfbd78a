"""Many runs compared: plan (arms x grid points x seeds), report (results.md / results.csv,
assembled once from sections), figures, tradeoffs (cost and robustness sections), stats."""
