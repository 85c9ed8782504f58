"""Prediction kernels: the tree walk of several boosters (`forest`), exact TreeSHAP tables
(`treeshap`), the bootstrap interval and support envelope (`interval`) and the time to response
(`survival`). Each optimised kernel proves itself against xgboost when built."""
