"""What a run will be, decided before it starts: inputs checked, GPUs placed, each command line."""
