"""Studies: several runs from one file (spec), their executors, searches and the
Optuna journal; the study's report is tunelab.report's."""
