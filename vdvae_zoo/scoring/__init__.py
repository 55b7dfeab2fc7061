"""Numbers about images and models: the likelihood bounds (bounds), the resumable scoring engine over data sets
(engine) and its state files (state), the paper's test-set numbers (evaluate), out-of-distribution scores (ood),
and sample sets (sample_sets)."""
