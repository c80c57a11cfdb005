"""Datasets: resolution (sources), file formats and columns (tables), text and image
loading, splitting (labels). Import the modules themselves (``tunelab.data.text``): this
package file imports nothing, so that importing one module does not import them all."""
