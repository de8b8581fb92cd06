"""Graph assembly, the batch runner and its command-line tools."""
