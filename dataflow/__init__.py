"""How data reaches the Trainer: the epoch protocol, seeded samplers, DataLoader workers, and the
machinery of sharded streams (plans, workers, shard index). ``base/`` holds the abstract loaders a
user subclasses; this package holds what they are built from."""
