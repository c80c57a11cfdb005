"""Scoring: metrics, statistics, classical estimators, per-split evaluation and the parts
predictors are made of."""
