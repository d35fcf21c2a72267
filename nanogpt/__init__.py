"""nanogpt: train, finetune, evaluate and sample GPT-2-class models (see README.md)."""
