"""Fine-tuning and training: the loop (trainer), the data each step reads (data), the update rules: skip, KL
weight, free bits (rules), the options (options), the run folder with its checkpoints and card (run_folder),
and the TensorBoard / Weights & Biases loggers (loggers)."""
