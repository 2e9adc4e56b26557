"""`search predict RUN --onnx FILE`: a single run's network as an ONNX file, for serving without this package.

The file holds the network only (torch.onnx's torch.export-based exporter, opset 18, a dynamic batch axis): its
input ``images`` is float32 (N, C, S, S), already normalised as the run normalised its images, ``(x / 255 - mean)
/ std`` per channel with the training split's mean and std (in the file's metadata as ``mean`` and ``std``, with
``classes``, ``task`` and ``dataset``); its output ``logits`` is (N, K): softmax (sigmoid for multi-label tasks)
gives the probabilities. Ensembles are not exported (each member is a run: export it on its own). Needs the
``onnx`` and ``onnxscript`` packages (the ``onnx`` extra); tests/test_predict.py checks the file against
onnxruntime where that is installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from search.errors import SearchError
from search.train import ensemble
from search.train.config import atomic_write
from search.train.data import class_names, get_info

OPSET = 18


def export(run: Path, out: Path) -> str:
    members, folder = ensemble.read_members(run)
    if len(members) != 1 or folder is not None:
        raise SearchError(f"{run} holds {len(members)} models (an ensemble or a --seeds folder); --onnx exports a "
                          f"single run: pass one run folder (e.g. {run}/seed-N or a member's folder)")
    try:
        import onnx  # noqa: F401  (torch's exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError:
        raise SearchError("--onnx needs the onnx and onnxscript packages: pip install 'onnx>=1.16' 'onnxscript>=0.2' "
                          "(this package's onnx extra)") from None
    if not out.parent.is_dir():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another --onnx path")
    m = members[0]
    info = get_info(m.cfg.dataset)
    net = m.net(torch.device("cpu")).to(memory_format=torch.contiguous_format)
    mean, std = (t.view(-1).tolist() for t in m.stats(torch.device("cpu")))
    example = torch.zeros(2, info.channels, m.cfg.size, m.cfg.size)  # 2: a batch axis torch.export may keep free

    def write(tmp: Path) -> None:
        program = torch.onnx.export(net, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("n")},),
                                    verbose=False)
        model = program.model_proto
        for key, value in (("mean", mean), ("std", std), ("classes", class_names(info.name, info.num_classes)),
                           ("task", info.task), ("dataset", info.name)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        import onnx

        onnx.save(model, str(tmp))

    atomic_write(out, write)
    return (f"{m.cfg.architecture} on {info.name} -> {out} (input 'images': float32 N x {info.channels} x "
            f"{m.cfg.size} x {m.cfg.size}, normalised with mean {[round(v, 4) for v in mean]} and std "
            f"{[round(v, 4) for v in std]}; output 'logits': N x {info.num_classes})")
