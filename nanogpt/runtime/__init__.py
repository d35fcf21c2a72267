"""Where and how the model runs: device and dtype, CPU threads, torchrun's process group, DDP/FSDP, the memory plan."""
