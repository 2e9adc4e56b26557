"""search: hyperparameter search for small image classifiers (MNIST, MedMNIST), built on Optuna."""

__version__ = "0.1.0"
