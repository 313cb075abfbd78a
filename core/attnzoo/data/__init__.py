"""Images in, batches out: datasets (CIFAR and image folders as uint8 tensors or file lists),
loader (splits, Batching, the Loader interface, the on-device pipeline), streaming (the
DataLoader pipeline), pipeline (which of the two a recipe gets), augment, corruptions, export."""
