"""The bottom floor: one TrainConfig, the datasets, augmentation, the training loop and MedMNIST's metrics.

Torch only: nothing here imports optuna, click or matplotlib (tests/test_layers.py pins it), so a final run,
a benchmark or another project can train without the search service.
"""
