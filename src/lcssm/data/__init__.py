"""Data sources: toy 2-D densities, point files, digits, image folders, CIFAR-10 batches."""
