"""The trial pipeline: dataset -> stage-1 features (cached) -> stage 2 -> metrics; no Ray, no MLflow."""
