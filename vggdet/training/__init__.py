"""Training: the loop (`trainer`), its console / log.jsonl / TensorBoard output (`logger`) and the checkpoint
schema, rotation and resume (`checkpoint`)."""
