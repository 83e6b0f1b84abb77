"""Datasets: the input path (io), the readers, their registry, transforms and batching."""
