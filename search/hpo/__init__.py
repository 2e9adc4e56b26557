"""The middle floor: study files, the search space, the objective, worker processes and the study store.

Optuna lives here. It imports the train floor; of the results floor only what a worker writes for a trial
(search.results.artifacts, which draws with search.results.figures), never the report page.
"""
