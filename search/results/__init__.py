"""The top floor: what is read out of a finished (or running) study and its final runs.

Ranked trials and the status summary (trials), figures, tables, the report page (report), the dashboard and the
published numbers a report compares with (published). Each trial's files are written on the hpo floor
(search/hpo/artifacts.py); this floor reads them.
"""
