"""The middle floor: study files, the search space, the objective, worker processes and the study store.

Optuna lives here. It imports the train floor and nothing of the results floor: what a worker writes for its
trial (search.hpo.artifacts, which draws with search.hpo.trial_figures) lives here, and results reads it.
"""
