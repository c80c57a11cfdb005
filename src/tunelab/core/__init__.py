"""The machinery every command shares: configuration, the task registry, the run lifecycle and
run directory, files, fingerprints, devices, processes, progress and plots."""
