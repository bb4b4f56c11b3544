"""Adapters: the I/O around the sans-I/O core. They never import each other."""
