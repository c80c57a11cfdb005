"""The comparison report: its first screen, sections and figures, rendered to Markdown
and HTML (what the runs say together is tunelab.analysis)."""
