"""fedcore: CIFAR-10 data, models, training and the Flower app behind fedlaunch."""
