"""`fedlaunch sweep`: a grid of runs from a profile plus axes, run as a queue and resumable."""
