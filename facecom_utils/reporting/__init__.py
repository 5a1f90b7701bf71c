"""Reporting: notebook plumbing, figures, the papermill runner, the run index, EDA, the nbval kernel."""
