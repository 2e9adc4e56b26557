"""The top floor: what is read out of a finished (or running) study and its final runs.

Ranked trials and the status summary (trials), figures, tables, the report page (report), each trial's files for
the dashboard (artifacts) and the published numbers a report compares with (published).
"""
