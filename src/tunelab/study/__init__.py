"""Studies: several runs from one file, their matrix, executors and the study report."""
