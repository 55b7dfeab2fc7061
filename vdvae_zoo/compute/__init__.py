"""Running passes over many images: micro-batches with per-image draws and the out-of-memory split (batching),
memory estimates (memory), several processes through torch.distributed (distributed)."""
