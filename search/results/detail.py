"""One trial's details and files: `search status --trial N` (with the end of its log, the artifact
trial-N-log.txt) and `search export --weights` (its kept weights, the artifact trial-N-model.pt)."""
from __future__ import annotations

import optuna

from search.errors import SearchError
from search.hpo import artifacts
from search.hpo.storage import open_storage
from search.hpo.store import locate
from search.results.trials import numbered, params_text, pick, value_text

LOG_LINES = 30  # of a trial's log, in `search status --trial N`


def describe(study: optuna.Study, number: int, storage_url: str | None) -> str:
    """`search status --trial N`: state, parameters, values per epoch, reason, worker, device, the end of its log."""
    t = numbered(study, number)
    attrs = t.user_attrs
    value = f" {value_text(study, t)}" if t.values else ""
    lines = [f"trial {number}: {t.state.name.lower()}{value}", f"parameters: {params_text(t) or '-'}",
             "values per epoch: " + (", ".join(f"{k}: {v:.4f}" for k, v in sorted(t.intermediate_values.items()))
                                     or "-")]
    for key in ("reason", "worker", "device", "epochs_run", "resumed_from_trial", "resumed_at_epoch", "resume_note"):
        if key in attrs:
            lines.append(f"{key.replace('_', ' ')}: {attrs[key]}")
    if "pack" in attrs:
        pack = attrs["pack"]
        lines.append(f"pack: trained as one fused model with trials {', '.join(map(str, pack['members']))} "
                     f"(pack {pack['id']}, {pack['size']} trials)")
    store = locate(storage_url)
    name = f"trial-{number}-log.txt"
    text = artifacts.read_text(t, open_storage(store, must_exist=True, heartbeat=False),
                               artifacts.artifact_dir(store.url), name)
    if text is None:
        lines.append(f"log: none ({name} is not in the artifact folder; set ${artifacts.ENV} where workers wrote it)")
    else:
        tail = text.rstrip("\n").splitlines()[-LOG_LINES:]
        lines += [f"last {len(tail)} lines of {name}:", *("  " + line for line in tail)]
    return "\n".join(lines)


def kept_weights(study: optuna.Study, storage_url: str | None, rank: int = 1, trial_number: int | None = None
                 ) -> bytes:
    """The kept weights of the rank-th best trial, or of trial ``trial_number`` (`search export --weights`); one
    line if there are none."""
    trial = pick(study, rank, trial_number)
    store = locate(storage_url)
    data = artifacts.read_bytes(trial, open_storage(store, must_exist=True, heartbeat=False),
                                artifacts.artifact_dir(store.url), f"trial-{trial.number}-model.pt")
    if data is None:
        raise SearchError(f"trial {trial.number}'s weights were not kept: the study file keeps the best trials' "
                          f"weights with keep_best_weights: true; without --weights, export the configuration and "
                          f"train it with search train")
    return data
