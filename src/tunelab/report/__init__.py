"""Reports: what runs say together (analysis) and the documents and plots that say it."""
