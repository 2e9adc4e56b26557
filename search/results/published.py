"""Published MedMNIST v2 results, for the comparison table and figure of `search report`.

Source: Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41 (2023), Table 3 (test AUC and ACC of the 2D datasets). Each method was
trained once per dataset on the official splits: ResNet-18/50 trained from scratch on 28 x 28 inputs or on
inputs resized to 224 x 224, and three AutoML tools.

Only datasets whose numbers were checked against the paper are listed; add a dataset by copying its row of
Table 3 here (AUC first, then ACC, as the paper prints them).
"""
from __future__ import annotations

CITATION = ("Yang, J., Shi, R., Wei, D., Liu, Z., Zhao, L., Ke, B., Pfister, H. & Ni, B. MedMNIST v2 - A "
            "large-scale lightweight benchmark for 2D and 3D biomedical image classification. Scientific Data 10, "
            "41 (2023). doi:10.1038/s41597-022-01721-8")
SOURCE = "MedMNIST v2 (Yang et al., Sci. Data 2023), Table 3"
DOI_URL = "https://doi.org/10.1038/s41597-022-01721-8"
BIBTEX = """@article{yang2023medmnist,
  title   = {{MedMNIST} v2 - A large-scale lightweight benchmark for {2D} and {3D} biomedical image classification},
  author  = {Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian
             and Pfister, Hanspeter and Ni, Bingbing},
  journal = {Scientific Data},
  volume  = {10},
  number  = {1},
  pages   = {41},
  year    = {2023},
  doi     = {10.1038/s41597-022-01721-8}
}"""

METHODS = ("ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)", "auto-sklearn", "AutoKeras",
           "Google AutoML Vision")

# dataset flag -> method -> (test AUC, test ACC), in the order of METHODS
MEDMNIST_V2: dict[str, dict[str, tuple[float, float]]] = {
    "pathmnist": dict(zip(METHODS, [
        (0.983, 0.907), (0.989, 0.909), (0.990, 0.911), (0.989, 0.892), (0.934, 0.716), (0.959, 0.834),
        (0.944, 0.728),
    ])),
}


def published(dataset: str) -> dict[str, tuple[float, float]] | None:
    """method -> (AUC, ACC) for ``dataset``, or None where no published values are kept here."""
    return MEDMNIST_V2.get(dataset)
