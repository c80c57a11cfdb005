"""The lowest layer, which every other imports: configuration and typed values, presets,
the task registry, the run directory and its safety rules, tracking, files and
fingerprints, statistics, devices, processes, progress and plots."""
