"""The network and its output distribution: encoder and decoder blocks (network), the discretized mixture of
logistics and Bernoulli heads (dmol), the output head a model calls (head), the random draws of a pass (draws),
what the model's methods accept (inputs), and how the network runs (runtime: dtypes, compile, memory format)."""
