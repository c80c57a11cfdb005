"""Datasets: resolution (sources), loading (text, images), labels, validation and
splitting. Import the modules themselves (``tunelab.data.text``): this package file
imports nothing, so that importing one module does not import them all."""
