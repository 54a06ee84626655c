"""Offline evaluation of trained runs: metrics across ranks, exact AUC/GAUC, slices, plots and reports."""
