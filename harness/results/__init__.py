"""The result schema: one typed record per trial (`record`), owning its MLflow spelling and
the names of its artifacts, and the image grids of learned sets (`images`)."""
