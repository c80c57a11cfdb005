"""tunelab audit: what a data set holds that would bend the numbers (copies, wrong labels, outliers)."""
